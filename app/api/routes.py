"""HTTP routes. Domain errors become HTTP responses in ``main.install_error_handlers``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.docs import SMOOTH_OK, smooth_request_body
from app.api.responses import json_response, smooth_response
from app.api.schemas import (
    AlphasResponse,
    ErrorResponse,
    RequestError,
    SmoothRequest,
    SmoothResponse,
    excerpt,
)
from app.serving.batcher import BatcherClosedError
from app.serving.budget import Reservation
from app.serving.intake import BodyLimits, Deadline, content_coding, read_body, until_disconnected
from app.serving.results import SmoothResult
from app.serving.service import SmoothingService

JSON = "application/json"
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 408, 413, 415, 422, 500, 503, 504)
}
UNAVAILABLE: dict[int | str, dict[str, object]] = {503: {"description": "Service Unavailable"}}


def service_of(request: Request) -> SmoothingService:
    service: SmoothingService = request.app.state.service
    return service


def headers_only(request: Request, response: Response) -> Response:
    """``response``, or for a HEAD request its status and headers alone (as for GET)."""
    if request.method != "HEAD":
        return response
    head = Response(status_code=response.status_code)
    head.raw_headers = response.raw_headers  # content-length and content-type of the GET
    return head


def declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise RequestError(400, "content-length must be a non-negative integer")
    return int(declared)


async def smooth(request: Request) -> Response:
    service = service_of(request)
    settings = service.settings
    deadline = Deadline(settings.request_timeout_s)
    limits = BodyLimits(settings.max_body_bytes, settings.body_timeout_s)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON:
        raise RequestError(415, f"content-type must be {JSON}, got {excerpt(media_type) or 'none'}")
    coding = content_coding(request.headers.get("content-encoding"))
    # A refusal here leaves the body unread: uvicorn drops the rest of it as it arrives
    # (in its parser, at no cost to the app) and keeps the connection, so the client reads
    # a 503 rather than a reset, and a shed request costs next to nothing.
    ticket = service.admit()
    try:
        body = await read_body(
            request.receive, declared_length(request), limits, ticket.reservation, deadline, coding
        )
        # Checked after the body is read: closing a socket with unread input resets it, and
        # the client would see a reset instead of this 503.
        if request.app.state.drain.active:
            raise BatcherClosedError("the server is shutting down; retry on another replica")
        work = parse_and_smooth(service, body, ticket.reservation, deadline)
        del body  # the work holds it until it is parsed, and no longer
        result = await until_disconnected(request.receive, work)
        return smooth_response(result, service, ticket, deadline)
    except BaseException:
        ticket.close()
        raise


async def parse_and_smooth(
    service: SmoothingService, body: bytes, reservation: Reservation, deadline: Deadline
) -> SmoothResult:
    job = await service.parse(body, reservation, deadline)
    del body
    return await service.smooth(job, reservation, deadline)


async def alphas(request: Request) -> Response:
    service = service_of(request)
    return json_response(
        {
            "alphas": service.alphas,
            "channels": list(service.channels),
            "kernel_size": service.model.kernel_size,
            "dilation": service.model.dilation,
            "receptive_field": service.model.receptive_field,
            "normalize": service.model.normalize,
            "warmup": service.model.warmup,
            "model_version": service.model_version,
            **service.equivalents,
            "time_unit": service.model.time_unit,
            "halflife_seconds": [service.model.time_unit * h for h in service.equivalents["halflife"]],
        }
    )


async def healthz(request: Request) -> Response:
    return headers_only(request, json_response({"status": "ok"}))


async def readyz(request: Request) -> Response:
    return headers_only(request, readiness(request))


def readiness(request: Request) -> Response:
    service: SmoothingService | None = getattr(request.app.state, "service", None)
    if request.app.state.drain.active:
        return json_response({"status": "draining"}, status=503)
    if service is None or not service.ready:
        return json_response({"status": "not ready"}, status=503)
    return json_response({"status": "ready", "model_version": service.model_version})


async def metrics(request: Request) -> Response:
    service: SmoothingService | None = getattr(request.app.state, "service", None)
    registry = request.app.state.metrics
    if service is not None:
        registry.queue_values.set(service.batcher.queued_values)
        registry.queue_depth.set(service.batcher.queued_pieces)
        registry.in_flight.set(service.batcher.in_flight)
        registry.inflight_bytes.set(service.budget.used)
        registry.in_progress.set(service.in_progress)
    return headers_only(request, Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST))


# Registered by call rather than by decorator, so that the handlers stay plain functions that a
# mutation tool can rewrite (mutmut leaves decorated functions alone; tests/README.md).
router = APIRouter()
router.add_api_route(
    "/smooth",
    smooth,
    methods=["POST"],
    response_model=SmoothResponse,
    responses={200: SMOOTH_OK, **ERRORS},
    openapi_extra=smooth_request_body(SmoothRequest.model_json_schema()),
    summary="Smooth series with the model's channels",
    description="Missing values are null, in the request and in the answer. A long series can be "
    "sent in chunks: send each with the history the previous answer returned. The body may be "
    "sent compressed (`Content-Encoding: gzip` or `deflate`); the size limit applies to its "
    "decompressed bytes.",
    operation_id="smooth",
)
router.add_api_route(
    "/alphas",
    alphas,
    methods=["GET"],
    response_model=AlphasResponse,
    summary="Smoothing factors in use",
    operation_id="alphas",
)
router.add_api_route("/healthz", healthz, methods=["GET"], summary="Liveness", operation_id="healthz")
router.add_api_route(
    "/readyz",
    readyz,
    methods=["GET"],
    summary="Readiness: 200 once the model is loaded and warm",
    responses=UNAVAILABLE,
    operation_id="readyz",
)
router.add_api_route(
    "/metrics",
    metrics,
    methods=["GET"],
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    operation_id="metrics",
)
# Probes and scrapes also answer HEAD, as GET without the body.
for path, endpoint in (("/healthz", healthz), ("/readyz", readyz), ("/metrics", metrics)):
    router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
