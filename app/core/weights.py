"""Saving and loading ConvEWMA weights as safetensors with validated metadata.

Weights are never unpickled: the loader reads the safetensors header and refuses
anything else (a ``torch.save`` pickle or zip file included) with a clear reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from app.core.ewma import MAX_KERNEL_SIZE, WARMUP_MODES, ConvEWMA

FORMAT_VERSION = "1"
MAX_DILATION = 1 << 20  # a receptive field of 32 million steps is already beyond any series limit
TENSOR_KEY = "logits"
_MAX_HEADER_BYTES = 1 << 20


class WeightsError(ValueError):
    """A weights file is missing, not safetensors, or does not describe a valid ConvEWMA."""


@dataclass(frozen=True)
class ModelCard:
    """Everything the metadata of a weights file says, validated."""

    channels: tuple[str, ...]
    kernel_size: int
    normalize: bool
    warmup: str
    eps: float
    dilation: int = 1
    time_unit: float = 1.0
    training_data: str = ""
    final_loss: float | None = None
    created_at: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        metadata = dict(self.extra)
        metadata.update(
            format_version=FORMAT_VERSION,
            channels=json.dumps(list(self.channels)),
            kernel_size=str(self.kernel_size),
            normalize=json.dumps(self.normalize),
            warmup=self.warmup,
            eps=repr(self.eps),
            dilation=str(self.dilation),
            training_data=self.training_data,
            final_loss="" if self.final_loss is None else repr(self.final_loss),
            created_at=self.created_at,
        )
        if self.time_unit != 1.0:
            # Only when it is not the default, so that a model trained without times is
            # written byte for byte as before times existed (the shipped model is rebuilt
            # and compared by its sha256).
            metadata["time_unit"] = repr(self.time_unit)
        return metadata


@dataclass(frozen=True)
class LoadedModel:
    model: ConvEWMA
    card: ModelCard
    sha256: str
    path: Path


def save_weights(model: ConvEWMA, card: ModelCard, path: str | Path) -> None:
    """Write ``model``'s logits and ``card`` as a safetensors file."""
    if len(card.channels) != model.channels:
        raise ValueError(f"{len(card.channels)} channel names for {model.channels} channels")
    if card.dilation != model.dilation:
        raise ValueError(f"the card says dilation {card.dilation}, the model has {model.dilation}")
    if card.time_unit != model.time_unit:
        raise ValueError(f"the card says time_unit {card.time_unit}, the model has {model.time_unit}")
    logits = model.logits.detach().to("cpu", torch.float32).contiguous()
    blob = save({TENSOR_KEY: logits}, metadata=card.to_metadata())
    Path(path).write_bytes(_canonical_layout(blob))


def _canonical_layout(blob: bytes) -> bytes:
    """Rewrite the JSON header with sorted keys so equal inputs give equal bytes.

    The safetensors writer emits metadata in hash-map order, which changes from run to
    run; tensor offsets are relative to the end of the header, so re-serialising it
    (padded to 8 bytes, as the format asks) leaves the data valid.
    """
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + header_len :]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_safetensors_header(path: Path) -> None:
    """Refuse non-safetensors files before handing them to the parser."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(9)
    if len(prefix) == 9:
        (header_len,) = struct.unpack("<Q", prefix[:8])
        if header_len <= min(_MAX_HEADER_BYTES, size - 8) and prefix[8:9] == b"{":
            return
    if (prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or prefix[:2] == b"PK":
        raise WeightsError(f"{path}: looks like a pickle/torch.save file; only safetensors is accepted")
    if len(prefix) < 9:
        raise WeightsError(f"{path}: too short to be a safetensors file ({size} bytes)")
    raise WeightsError(f"{path}: not a safetensors file (bad header)")


def _parse_card(metadata: dict[str, str], path: Path) -> ModelCard:
    def need(key: str) -> str:
        if key not in metadata:
            raise WeightsError(f"{path}: metadata key {key!r} is missing")
        return metadata[key]

    version = need("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(f"{path}: unsupported format_version {version!r} (expected {FORMAT_VERSION!r})")
    try:
        channels = json.loads(need("channels"))
        kernel_size = int(need("kernel_size"))
        normalize = json.loads(need("normalize"))
        eps = float(need("eps"))
        # Files written before dilation existed have no key: their taps are adjacent.
        dilation_text = metadata.get("dilation", "1")
        dilation = int(dilation_text) if dilation_text.isdigit() else -1
        # Files written before times existed have no key: their alphas are per second.
        time_unit = float(metadata.get("time_unit", "1.0"))
        loss_text = metadata.get("final_loss", "")
        final_loss = float(loss_text) if loss_text else None
    except (ValueError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: malformed metadata: {exc}") from None
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) and c for c in channels):
        raise WeightsError(f"{path}: 'channels' must be a non-empty JSON list of names")
    if len(set(channels)) != len(channels):
        raise WeightsError(f"{path}: duplicate channel names {channels}")
    if not 1 <= kernel_size <= MAX_KERNEL_SIZE:
        raise WeightsError(f"{path}: kernel_size {kernel_size} outside [1, {MAX_KERNEL_SIZE}]")
    if not isinstance(normalize, bool):
        raise WeightsError(f"{path}: 'normalize' must be true or false, got {metadata['normalize']!r}")
    warmup = need("warmup")
    if warmup not in WARMUP_MODES:
        raise WeightsError(f"{path}: warmup {warmup!r} is not one of {WARMUP_MODES}")
    if not (math.isfinite(eps) and 0.0 < eps < 0.5):
        raise WeightsError(f"{path}: eps {eps} outside (0, 0.5)")
    if not 1 <= dilation <= MAX_DILATION:
        raise WeightsError(
            f"{path}: dilation {metadata.get('dilation')!r} is not an integer in [1, {MAX_DILATION}]"
        )
    if not (math.isfinite(time_unit) and time_unit > 0.0):
        raise WeightsError(f"{path}: time_unit {metadata.get('time_unit')!r} is not a number of seconds > 0")
    known = {
        "format_version",
        "channels",
        "kernel_size",
        "normalize",
        "warmup",
        "eps",
        "dilation",
        "time_unit",
        "training_data",
        "final_loss",
        "created_at",
    }
    return ModelCard(
        channels=tuple(channels),
        kernel_size=kernel_size,
        normalize=normalize,
        warmup=warmup,
        eps=eps,
        dilation=dilation,
        time_unit=time_unit,
        training_data=metadata.get("training_data", ""),
        final_loss=final_loss,
        created_at=metadata.get("created_at", ""),
        extra={k: v for k, v in metadata.items() if k not in known},
    )


def load_weights(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load and validate a weights file; raise :class:`WeightsError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    _check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata: dict[str, Any] = handle.metadata() or {}
            keys = set(handle.keys())
            if keys != {TENSOR_KEY}:
                raise WeightsError(
                    f"{path}: expected exactly the tensor {TENSOR_KEY!r}, found {sorted(keys)}"
                )
            logits = handle.get_tensor(TENSOR_KEY)
    except SafetensorError as exc:
        raise WeightsError(f"{path}: not a valid safetensors file: {exc}") from None
    card = _parse_card(metadata, path)
    if not logits.is_floating_point() or logits.shape != (len(card.channels),):
        raise WeightsError(
            f"{path}: {TENSOR_KEY!r} must be a float tensor of shape ({len(card.channels)},), "
            f"got {logits.dtype} {tuple(logits.shape)}"
        )
    if not torch.isfinite(logits).all():
        raise WeightsError(f"{path}: {TENSOR_KEY!r} contains NaN or infinite values")
    model = ConvEWMA(
        len(card.channels),
        card.kernel_size,
        normalize=card.normalize,
        warmup=card.warmup,
        dilation=card.dilation,
        time_unit=card.time_unit,
        eps=card.eps,
        device=device,
        dtype=dtype,
    )
    with torch.no_grad():
        model.logits.copy_(logits.to(dtype))
    model.eval()
    return LoadedModel(model=model, card=card, sha256=file_sha256(path), path=path)
