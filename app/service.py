"""The long-lived state of one server process: model on its device, batcher, metrics."""

from __future__ import annotations

import logging

import torch

from app.batcher import BatchLimits, MicroBatcher
from app.metrics import ServiceMetrics
from app.runtime import tune_allocator
from app.settings import Settings
from app.weights import LoadedModel, load_weights

logger = logging.getLogger("convewma")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"CONVEWMA_DEVICE={name} but no CUDA device is available")
    return device


class SmoothingService:
    """Built by the lifespan: loads, warms up, then owns the batcher until shutdown."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ready = False
        if settings.tune_allocator:
            tune_allocator()
        self.device = resolve_device(settings.device)
        self.loaded: LoadedModel = load_weights(settings.weights, device=self.device)
        self.model = self.loaded.model
        self.channels = self.loaded.card.channels
        self.model_version = f"sha256:{self.loaded.sha256}"
        with torch.inference_mode():
            self.alphas = [float(a) for a in self.model.alphas.cpu().tolist()]
        self.batcher = MicroBatcher(
            self.forward,
            BatchLimits(
                max_batch_size=settings.max_batch_size,
                max_batch_values=settings.max_batch_values,
                max_wait_s=settings.max_wait_ms / 1000.0,
                max_queue_values=settings.max_queue,
                max_padding_fraction=settings.max_padding_fraction,
            ),
            on_batch=metrics.observe_batch,
        )
        metrics.model.info(
            {
                "model_version": self.model_version,
                "channels": ",".join(self.channels),
                "kernel_size": str(self.model.kernel_size),
                "device": str(self.device),
                "weights": str(settings.weights),
            }
        )

    def forward(self, x: torch.Tensor, warmup: str) -> torch.Tensor:
        """(N, T) float32 on the CPU to (N, C, T) on the CPU; runs in the batcher's thread."""
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        smoothed: torch.Tensor = self.model(x, warmup=warmup)
        return smoothed.cpu()

    def warm_up(self) -> None:
        with torch.inference_mode():
            for warmup in ("zeros", "adjust"):
                self.forward(torch.zeros(2, 64), warmup)

    async def start(self) -> None:
        self.warm_up()
        await self.batcher.start()
        self.ready = True
        logger.info(
            "convewma ready: model %s (%s) on %s", self.settings.weights, self.model_version[:19], self.device
        )

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
