"""HTTP routes. Domain errors become HTTP responses in ``main.install_error_handlers``."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.batcher import BatcherClosedError
from app.schemas import (
    AlphasResponse,
    ErrorResponse,
    RequestError,
    RequestLimits,
    SmoothRequest,
    SmoothResponse,
    parse_smooth_request,
)
from app.service import SmoothingService

router = APIRouter()
JSON = "application/json"
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 500, 503, 504)
}


def json_response(payload: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=JSON
    )


def service_of(request: Request) -> SmoothingService:
    service: SmoothingService = request.app.state.service
    return service


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/smooth",
    response_model=SmoothResponse,
    responses=ERRORS,
    openapi_extra={"requestBody": {"content": {JSON: {"schema": SmoothRequest.model_json_schema()}}}},
    summary="Smooth series with the model's channels",
)
async def smooth(request: Request) -> Response:
    service = service_of(request)
    settings = service.settings
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON:
        raise RequestError(415, f"content-type must be {JSON}, got {media_type or 'none'}")
    body = await read_body(request, settings.max_body_bytes)
    # Checked after the body is read: closing a socket with unread input resets it, and
    # the client would see a reset instead of this 503.
    if request.app.state.drain.active:
        raise BatcherClosedError("the server is shutting down; retry on another replica")
    job = parse_smooth_request(
        body, RequestLimits(settings.max_series, settings.max_length), service.channels
    )
    warmup = job.warmup or service.model.warmup
    outputs = await asyncio.wait_for(service.batcher.submit(job.series, warmup), settings.request_timeout_s)
    chosen = np.asarray(job.channels)
    smoothed = [output[chosen] for output in outputs]
    for index, values in enumerate(smoothed):
        if not np.isfinite(values).all():
            raise RequestError(
                422, f"series[{index}]: the smoothed values overflow float32; scale the input down"
            )
    return json_response(
        {
            "smoothed": smoothed,
            "channels": [service.channels[c] for c in job.channels],
            "alphas": [service.alphas[c] for c in job.channels],
            "model_version": service.model_version,
        }
    )


@router.get("/alphas", response_model=AlphasResponse, summary="Smoothing factors in use")
async def alphas(request: Request) -> Response:
    service = service_of(request)
    return json_response(
        {
            "alphas": service.alphas,
            "channels": list(service.channels),
            "kernel_size": service.model.kernel_size,
            "normalize": service.model.normalize,
            "warmup": service.model.warmup,
            "model_version": service.model_version,
        }
    )


@router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz", summary="Readiness: 200 once the model is loaded and warm", responses={503: {}})
async def readyz(request: Request) -> Response:
    service: SmoothingService | None = getattr(request.app.state, "service", None)
    if request.app.state.drain.active:
        return json_response({"status": "draining"}, status=503)
    if service is None or not service.ready:
        return json_response({"status": "not ready"}, status=503)
    return json_response({"status": "ready", "model_version": service.model_version})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    service: SmoothingService | None = getattr(request.app.state, "service", None)
    registry = request.app.state.metrics
    if service is not None:
        registry.queue_values.set(service.batcher.queued_values)
        registry.queue_depth.set(service.batcher.queued_pieces)
        registry.in_flight.set(service.batcher.in_flight)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
