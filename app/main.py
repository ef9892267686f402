"""App factory and lifespan: ``uvicorn app.main:app`` or ``convewma serve``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from app import __version__
from app.api.docs import SWAGGER_UI_PARAMETERS
from app.api.oip.routes import router as oip_router
from app.api.responses import json_response
from app.api.routes import router
from app.api.schemas import RequestError
from app.serving.batcher import BatcherClosedError, BatchFailedError, QueueFullError
from app.serving.drain import DrainMiddleware, DrainState, SignalDrain
from app.serving.intake import ClientDisconnectedError, ServerBusyError
from app.serving.metrics import RequestMetricsMiddleware, ServiceMetrics
from app.serving.service import SmoothingService
from app.serving.settings import Settings

logger = logging.getLogger("convewma")
ROUTES = frozenset(
    {
        "/smooth",
        "/alphas",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/convewma",
        "/v2/models/convewma/ready",
        "/v2/models/convewma/infer",
    }
)


def error_response(request: Request, detail: str, status: int) -> Response:
    """``{"detail": ...}``, or under ``/v2`` the Open Inference Protocol's ``{"error": ...}``,
    where a request the service cannot take is 400 (``/smooth`` says 422 when its JSON is well formed)."""
    if request.url.path == "/v2" or request.url.path.startswith("/v2/"):
        return json_response({"error": detail}, status=400 if status == 422 else status)
    return json_response({"detail": detail}, status=status)


def install_error_handlers(app: FastAPI) -> None:
    """Every domain error maps to one HTTP status with a JSON ``detail``, here and only here."""

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        response = error_response(request, exc.detail, exc.status)
        if exc.status in (408, 413):  # part of the body may be unread: do not reuse the connection
            response.headers["Connection"] = "close"
        return response

    async def unavailable(request: Request, exc: Exception) -> Response:
        response = error_response(request, f"server busy: {exc}", 503)
        response.headers["Retry-After"] = "1"
        return response

    async def timed_out(request: Request, exc: Exception) -> Response:
        return error_response(request, "the request did not complete within the server's timeout", 504)

    async def disconnected(request: Request, exc: Exception) -> Response:
        # Nobody is left to read this response; its status 499 is what the metrics record.
        logger.info("%s %s: %s", request.method, request.url.path, exc)
        return Response(status_code=499)

    async def batch_failed(request: Request, exc: Exception) -> Response:
        logger.error("batch failed", exc_info=exc.__cause__ or exc)
        return error_response(request, "internal error while smoothing this batch", 500)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback; the client gets JSON without it, like every error.
        return error_response(request, "internal server error", 500)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # no route (404), a wrong method (405)
        response = error_response(request, exc.detail, exc.status_code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(QueueFullError, unavailable)
    app.add_exception_handler(BatcherClosedError, unavailable)
    app.add_exception_handler(ServerBusyError, unavailable)
    app.add_exception_handler(ClientDisconnectedError, disconnected)
    app.add_exception_handler(TimeoutError, timed_out)
    app.add_exception_handler(BatchFailedError, batch_failed)


def create_app(settings: Settings | None = None, drain: DrainState | None = None) -> FastAPI:
    """The app; its lifespan drains on SIGTERM under any uvicorn-based launcher (``SignalDrain``)."""
    settings = settings or Settings()
    drain = drain or DrainState()
    metrics = ServiceMetrics()

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:

        service = SmoothingService(settings, metrics)  # loads and validates the weights
        await service.start()  # warm-up forward, then the batcher; ready from here
        app.state.service = service
        try:
            # Under any launcher that runs a uvicorn server, SIGTERM drains first (app/serving/drain.py).
            async with SignalDrain(drain, settings.drain_s):
                yield
        finally:
            await service.stop()  # uvicorn stopped intake; finish what was accepted

    # /docs and /redoc with Swagger UI and ReDoc served by the app itself (no CDN).
    app = FastAPIOffline(
        title="convewma-service",
        version=__version__,
        description="Exponential smoothing with learned per-channel alphas, micro-batched.",
        # Wrapped by call, not decorated: mutmut leaves decorated functions alone.
        lifespan=asynccontextmanager(lifespan),
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = drain
    app.include_router(router)
    app.include_router(oip_router)
    install_error_handlers(app)
    app.add_middleware(DrainMiddleware, state=drain)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, routes=ROUTES)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app from the environment on first access only, so
    # importing this module (tests, tools) reads no settings.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
