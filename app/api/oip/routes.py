"""The Open Inference Protocol (KServe v2 REST) routes, with Triton's binary tensor extension.

An infer request takes the path of ``/smooth`` from admission on: the same ticket, body
limits, memory budget, deadline and micro-batcher, so OIP and JSON traffic batch together.
Errors are ``{"error": "..."}`` (``app.main``), 400 for a bad request.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app import __version__
from app.api.jsoncodec import count_values_upper_bound
from app.api.oip.request import INPUTS, OUTPUTS, decode
from app.api.oip.response import MODEL_NAME, Encoded, encode, response_bound
from app.api.oip.tensors import show
from app.api.responses import json_response
from app.api.routes import declared_length, service_of
from app.api.schemas import RequestError, RequestLimits
from app.serving.batcher import BatcherClosedError
from app.serving.budget import Reservation, parse_bytes
from app.serving.intake import BodyLimits, Deadline, content_coding, read_body, reserve, until_disconnected
from app.serving.metrics import Receive, Scope, Send
from app.serving.service import INLINE_BYTES, INLINE_VALUES, SmoothingService, Ticket

EXTENSIONS = ["binary_tensor_data", "parameters"]
INLINE_BINARY_BYTES = 1 << 20
# Variable dimensions are -1; INPUT and HISTORY also take FP64 (then SMOOTHED and HISTORY are FP64).
SHAPES = {
    "INPUT": [-1, -1],
    "LENGTHS": [-1],
    "HISTORY": [-1, -1],
    "HISTORY_LENGTHS": [-1],
    "TIMES": [-1, -1],
    "HISTORY_TIMES": [-1, -1],
    "SMOOTHED": [-1, -1, -1],
    "SMOOTHED_LENGTHS": [-1],
    "ALPHAS": [-1],
}
OUTPUT_DATATYPES = {
    "SMOOTHED": "FP32",
    "SMOOTHED_LENGTHS": "INT64",
    "ALPHAS": "FP64",
    "HISTORY": "FP32",
    "HISTORY_LENGTHS": "INT64",
    "HISTORY_TIMES": "FP64",
}


def model_of(request: Request) -> SmoothingService:
    """The service, once the path's model name (and version, if any) are this server's."""
    service = service_of(request)
    name = request.path_params["name"]
    if name != MODEL_NAME:
        raise RequestError(404, f"unknown model {show(name)}: this server serves {MODEL_NAME!r}")
    version = request.path_params.get("version")
    if version is not None and version != service.model_version:
        raise RequestError(
            404, f"model {MODEL_NAME} has no version {show(version)}; loaded: {service.model_version}"
        )
    return service


async def server_metadata(request: Request) -> Response:
    return json_response({"name": "convewma-service", "version": __version__, "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    service: SmoothingService | None = getattr(request.app.state, "service", None)
    if request.app.state.drain.active:
        raise RequestError(400, "the server is shutting down")
    if service is None or not service.ready:
        raise RequestError(400, "the model is not loaded yet")
    return json_response({"ready": True})


async def model_metadata(request: Request) -> Response:
    service = model_of(request)
    settings = service.settings

    def tensor(name: str, datatype: str) -> dict[str, object]:
        return {"name": name, "datatype": datatype, "shape": SHAPES[name]}

    return json_response(
        {
            "name": MODEL_NAME,
            "versions": [service.model_version],
            "platform": "pytorch",
            "inputs": [tensor(name, datatypes[0]) for name, datatypes in INPUTS.items()],
            "outputs": [tensor(name, OUTPUT_DATATYPES[name]) for name in OUTPUTS],
            # Beyond the protocol's fields: what a client needs to split its inputs.
            "parameters": {
                "channels": ",".join(service.channels),
                "kernel_size": service.model.kernel_size,
                "max_series": settings.max_series,
                "max_length": settings.max_length,
                "max_body_bytes": settings.max_body_bytes,
            },
        }
    )


async def model_ready(request: Request) -> Response:
    model_of(request)
    return await ready(request)


async def infer(request: Request) -> Response:
    service = model_of(request)
    settings = service.settings
    deadline = Deadline(settings.request_timeout_s)
    limits = BodyLimits(settings.max_body_bytes, settings.body_timeout_s)
    coding = content_coding(request.headers.get("content-encoding"))
    ticket = service.admit()  # refused before the body is read, as on /smooth
    try:
        body = await read_body(
            request.receive, declared_length(request), limits, ticket.reservation, deadline, coding
        )
        if request.app.state.drain.active:
            raise BatcherClosedError("the server is shutting down; retry on another replica")
        header = request.headers.get("inference-header-content-length")
        work = run_infer(service, body, header, ticket.reservation, deadline)
        del body
        encoded = await until_disconnected(request.receive, work)
        return BufferResponse(encoded, ticket)
    except BaseException:
        ticket.close()
        raise


async def run_infer(
    service: SmoothingService, body: bytes, header: str | None, reservation: Reservation, deadline: Deadline
) -> Encoded:
    """Parse, smooth and encode one infer request, each step within its memory reservation."""
    length = len(body) if header is None else _header_length(header, len(body))
    inline = len(body) <= INLINE_BYTES
    # Numbers in the JSON header (``data``) become Python objects while it is parsed.
    bound = await service.codec_call(deadline, count_values_upper_bound, body[:length], inline=inline)
    # Twice the body: it, and the aligned copy of its tensors that a header's length may need.
    needed = parse_bytes(2 * len(body), bound, len(service.channels))
    reserve(reservation, needed, _too_big(needed, reservation))
    limits = RequestLimits(service.settings.max_series, service.settings.max_length)
    plan = await service.codec_call(
        deadline, decode, body, None if header is None else length, limits, service.channels, inline=inline
    )
    if plan.timeout_s is not None:
        deadline = Deadline(min(deadline.total_s, plan.timeout_s), deadline.started)
    # The series are views of the body: it stays held, with the response, to the last byte.
    result = await service.smooth(plan.job, reservation, deadline, held=len(body) + response_bound(plan))
    # Binary outputs are copies (about 0.2 ms per MiB): on the loop, a thread hop costs more.
    binary = all(as_binary for _, as_binary in plan.outputs)
    inline = result.values <= INLINE_VALUES or (binary and result.values * 8 <= INLINE_BINARY_BYTES)
    return await service.codec_call(deadline, encode, plan, result, inline=inline)


def _header_length(value: str, body_bytes: int) -> int:
    if not value.strip().isdecimal() or int(value) > body_bytes:
        raise RequestError(
            400,
            f"Inference-Header-Content-Length must be a number of bytes up to the body's {body_bytes}, "
            f"got {show(value)}",
        )
    return int(value)


def _too_big(needed: int, reservation: Reservation) -> str:
    return (
        f"this request needs about {needed} bytes of server memory; the limit is "
        f"{reservation.budget.capacity}: send it in smaller requests"
    )


class BufferResponse(Response):
    """An encoded infer response; closes the request's ticket after its last byte is sent."""

    def __init__(self, encoded: Encoded, ticket: Ticket) -> None:
        binary = encoded.header_length is not None
        super().__init__(
            encoded.body, media_type="application/octet-stream" if binary else "application/json"
        )
        if binary:
            self.headers["Inference-Header-Content-Length"] = str(encoded.header_length)
        self.ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.close()


MODEL = "/v2/models/{name}"
VERSION = "/v2/models/{name}/versions/{version}"
router = APIRouter(tags=["Open Inference Protocol"])
router.add_api_route("/v2", server_metadata, methods=["GET"], summary="Server metadata")
router.add_api_route("/v2/health/live", live, methods=["GET"], summary="Server liveness")
router.add_api_route("/v2/health/ready", ready, methods=["GET"], summary="Server readiness (400 when not)")
for prefix in (MODEL, VERSION):
    router.add_api_route(prefix, model_metadata, methods=["GET"], summary="Model metadata")
    router.add_api_route(f"{prefix}/ready", model_ready, methods=["GET"], summary="Model readiness")
    router.add_api_route(
        f"{prefix}/infer",
        infer,
        methods=["POST"],
        summary="Smooth series: binary tensors (Inference-Header-Content-Length) or JSON data",
    )
