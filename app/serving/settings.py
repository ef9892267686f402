"""Service settings: environment variables with the ``CONVEWMA_`` prefix, read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.paths import DEFAULT_WEIGHTS


class Settings(BaseSettings):
    """Every knob of the service; invalid values stop start-up with pydantic's message."""

    model_config = SettingsConfigDict(env_prefix="CONVEWMA_", extra="forbid", frozen=True)

    weights: Path = Field(DEFAULT_WEIGHTS, description="safetensors weights to serve")
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_batch_size: int = Field(256, ge=1, description="series per forward")
    max_batch_values: int = Field(4_000_000, ge=1, description="padded values per forward")
    max_wait_ms: float = Field(0.0, ge=0.0, le=10_000.0, description="extra wait for a fuller batch")
    max_padding_fraction: float = Field(
        0.25, ge=0.0, le=1.0, description="padding share above which a batch groups by length"
    )
    max_queue: int = Field(50_000_000, ge=1, description="values waiting before 503")
    max_series: int = Field(1024, ge=1, description="series per request")
    max_length: int = Field(100_000, ge=1, description="values per series")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="request body limit")
    request_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="one deadline from a request's first byte to its last"
    )
    max_inflight_bytes: int = Field(
        1_000_000_000,
        ge=1_000_000,
        description="memory budget for requests in flight (bodies, parsed arrays, outputs); 503 when full",
    )
    max_concurrency: int = Field(256, ge=1, description="requests in progress before a fast 503")
    max_connections: int = Field(1000, ge=1, description="open connections before a new one gets 503")
    max_header_bytes: int = Field(65_536, ge=1024, description="request line and headers (431 above)")
    header_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="from a request's first byte to the end of its headers (408)"
    )
    body_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="longest pause while a request body streams in (408)"
    )
    idle_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="a connection with no request in progress is closed after this"
    )
    drain_s: float = Field(
        5.0, ge=0.0, le=300.0, description="on SIGTERM, answer 503 for up to this long before closing"
    )
    tune_allocator: bool = Field(True, description="reuse freed pages for large tensors (glibc)")
    torch_threads: int = Field(
        1,
        ge=0,
        le=1024,
        description="torch intra-op threads for the forward (0: torch's default, one per core); "
        "1 leaves the other cores to the event loop and the codec (benchmarks/results/threads-cpu.md)",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.max_length > self.max_batch_values:
            raise ValueError(
                f"max_length ({self.max_length}) must not exceed max_batch_values ({self.max_batch_values}): "
                "a single series must fit in one batch"
            )
        return self
