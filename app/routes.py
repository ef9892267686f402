"""HTTP routes. Domain errors become HTTP responses in ``main.install_error_handlers``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.batcher import BatcherClosedError
from app.intake import BodyLimits, Deadline, read_body, until_disconnected
from app.responses import json_response, smooth_response
from app.schemas import (
    AlphasResponse,
    ErrorResponse,
    RequestError,
    SmoothRequest,
    SmoothResponse,
    excerpt,
)
from app.service import SmoothingService

router = APIRouter()
JSON = "application/json"
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 408, 413, 415, 422, 500, 503, 504)
}


def service_of(request: Request) -> SmoothingService:
    service: SmoothingService = request.app.state.service
    return service


def declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise RequestError(400, "content-length must be a non-negative integer")
    return int(declared)


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
    deadline = Deadline(settings.request_timeout_s)
    limits = BodyLimits(settings.max_body_bytes, settings.body_timeout_s)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON:
        raise RequestError(415, f"content-type must be {JSON}, got {excerpt(media_type) or 'none'}")
    # A refusal here leaves the body unread: uvicorn drops the rest of it as it arrives
    # (in its parser, at no cost to the app) and keeps the connection, so the client reads
    # a 503 rather than a reset, and a shed request costs next to nothing.
    ticket = service.admit()
    try:
        body = await read_body(
            request.receive, declared_length(request), limits, ticket.reservation, deadline
        )
        # Checked after the body is read: closing a socket with unread input resets it, and
        # the client would see a reset instead of this 503.
        if request.app.state.drain.active:
            raise BatcherClosedError("the server is shutting down; retry on another replica")
        result = await until_disconnected(request.receive, service.smooth(body, ticket.reservation, deadline))
        return smooth_response(result, service, ticket, deadline)
    except BaseException:
        ticket.close()
        raise


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
        registry.inflight_bytes.set(service.budget.used)
        registry.in_progress.set(service.in_progress)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
