"""``uvicorn app.main:app``: the module-level app is built on first access only, once."""

from __future__ import annotations

import asyncio
import importlib
import logging

import httpx
import pytest
from fastapi import FastAPI

import app.main
from app import __version__
from app.api.docs import SWAGGER_UI_PARAMETERS
from app.api.schemas import RequestError
from app.main import ROUTES, create_app, install_error_handlers
from app.serving.batcher import BatcherClosedError, BatchFailedError, QueueFullError
from app.serving.drain import DrainMiddleware, DrainState
from app.serving.intake import ClientDisconnectedError, ServerBusyError
from app.serving.metrics import RequestMetricsMiddleware, ServiceMetrics
from app.serving.settings import Settings


@pytest.fixture
def fresh_module(monkeypatch):
    """app.main as if just imported: no app built yet (and none left behind)."""
    monkeypatch.delitem(vars(app.main), "app", raising=False)
    yield app.main
    vars(app.main).pop("app", None)


def test_importing_builds_no_app(fresh_module):
    assert "app" not in vars(fresh_module)


def test_the_app_is_built_from_the_environment_once(fresh_module, monkeypatch):
    monkeypatch.setenv("CONVEWMA_MAX_SERIES", "7")
    built = fresh_module.app
    assert isinstance(built, FastAPI)
    assert built.state.settings.max_series == 7  # read from the environment at first access
    assert vars(fresh_module)["app"] is built  # cached: later imports find it as is
    assert fresh_module.app is built
    assert importlib.import_module("app.main").app is built


@pytest.mark.parametrize("name", ["App", "application", "create", "APP"])
def test_other_names_are_attribute_errors_naming_them(fresh_module, name):
    with pytest.raises(AttributeError) as error:
        getattr(fresh_module, name)
    assert error.value.args == (name,)
    assert "app" not in vars(fresh_module)  # a failed look-up builds nothing


# --- the error handlers: one status and a JSON detail per domain error ------------------


def error_app() -> FastAPI:
    """A bare app with only the handlers, and a route that raises what ``/raise/{kind}`` names."""
    application = FastAPI()
    install_error_handlers(application)
    cause = RuntimeError("CUDA out of memory")

    async def raising(kind: str) -> None:
        errors: dict[str, Exception] = {
            "request": RequestError(422, "series 0: not a number"),
            "timeout": RequestError(408, "the body did not arrive in time"),
            "too_large": RequestError(413, "the body is over 1024 bytes"),
            "conflict": RequestError(409, "x"),
            "uri": RequestError(414, "x"),
            "queue": QueueFullError("queue full (10 values waiting)"),
            "closed": BatcherClosedError("shutting down"),
            "busy": ServerBusyError("256 requests in progress"),
            "gone": ClientDisconnectedError("the client went away"),
            "deadline": TimeoutError(),
            "batch": BatchFailedError("forward failed"),
            "bug": KeyError("oops"),
        }
        error = errors[kind]
        if kind == "batch":
            raise error from cause
        raise error

    application.add_api_route("/raise/{kind}", raising, methods=["POST"])
    return application


def call(kind: str) -> httpx.Response:
    async def scenario() -> httpx.Response:
        # The catch-all handler answers, then Starlette re-raises for the server to log.
        transport = httpx.ASGITransport(app=error_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(f"/raise/{kind}")

    return asyncio.run(scenario())


BUSY = {"Retry-After": "1"}
CLOSE = {"Connection": "close"}
TIMEOUT = "the request did not complete within the server's timeout"


@pytest.mark.parametrize(
    ("kind", "status", "detail", "headers"),
    [
        ("request", 422, "series 0: not a number", {}),
        ("timeout", 408, "the body did not arrive in time", CLOSE),  # part of the body unread
        ("too_large", 413, "the body is over 1024 bytes", CLOSE),
        ("conflict", 409, "x", {}),
        ("uri", 414, "x", {}),
        ("queue", 503, "server busy: queue full (10 values waiting)", BUSY),
        ("closed", 503, "server busy: shutting down", BUSY),
        ("busy", 503, "server busy: 256 requests in progress", BUSY),
        ("deadline", 504, TIMEOUT, {}),
        ("batch", 500, "internal error while smoothing this batch", {}),
        ("bug", 500, "internal server error", {}),
    ],
)
def test_each_error_is_one_status_and_a_json_detail(kind, status, detail, headers):
    response = call(kind)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": detail}
    extra = {name: response.headers.get(name) for name in ("Connection", "Retry-After")}
    assert extra == {name: headers.get(name) for name in ("Connection", "Retry-After")}


def test_a_client_that_went_away_is_499_and_one_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="convewma"):
        response = call("gone")
    assert (response.status_code, response.content) == (499, b"")
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "convewma"] == [
        ("INFO", "POST /raise/gone: the client went away")
    ]


def test_a_failed_batch_logs_its_cause_with_the_traceback(caplog):
    with caplog.at_level(logging.INFO, logger="convewma"):
        call("batch")
    (record,) = [r for r in caplog.records if r.name == "convewma"]
    assert (record.levelname, record.getMessage()) == ("ERROR", "batch failed")
    assert record.exc_info is not None
    assert repr(record.exc_info[1]) == "RuntimeError('CUDA out of memory')"  # the cause, not the wrapper


# --- the app: its description, state, middleware ----------------------------------------


def test_create_app_serves_the_settings_and_drain_it_is_given(monkeypatch):
    monkeypatch.setenv("CONVEWMA_MAX_SERIES", "9")  # not read: the settings are given
    settings, drain = Settings(max_series=3), DrainState()
    built = create_app(settings, drain)
    assert built.state.settings is settings
    assert built.state.drain is drain
    assert isinstance(built.state.metrics, ServiceMetrics)
    # Outermost first: the metrics see every answer, the drain's 503s included.
    stack = [(m.cls, m.kwargs) for m in built.user_middleware]
    assert stack == [
        (RequestMetricsMiddleware, {"metrics": built.state.metrics, "routes": ROUTES}),
        (DrainMiddleware, {"state": drain}),
    ]


def test_create_app_without_arguments_reads_the_environment(monkeypatch):
    monkeypatch.setenv("CONVEWMA_MAX_SERIES", "9")
    first, second = create_app(), create_app()
    assert first.state.settings.max_series == 9
    assert isinstance(first.state.drain, DrainState)
    assert first.state.drain is not second.state.drain  # each app drains on its own
    assert first.state.metrics is not second.state.metrics


def test_the_openapi_document_names_the_service():
    built = create_app(Settings())
    info = built.openapi()["info"]
    assert info == {
        "title": "convewma-service",
        "version": __version__,
        "description": "Exponential smoothing with learned per-channel alphas, micro-batched.",
    }
    assert built.swagger_ui_parameters == SWAGGER_UI_PARAMETERS


def test_the_lifespan_drains_the_apps_own_state_on_sigterm():
    import signal

    import uvicorn

    from app.serving import drain as drain_module

    settings, drain = Settings(device="cpu", drain_s=5.0), DrainState()
    built = create_app(settings, drain)
    server = uvicorn.Server(uvicorn.Config(built))
    saved = {sig: signal.signal(sig, server.handle_exit) for sig in drain_module.HANDLED_SIGNALS}

    async def scenario() -> None:
        async with built.router.lifespan_context(built):
            handler = signal.getsignal(signal.SIGTERM)
            assert handler != server.handle_exit  # the drain's, while the app runs
            handler(signal.SIGTERM, None)  # type: ignore[operator, misc]
            assert drain.active  # the state the routes and the middleware read
            assert not server.should_exit  # not until the drain has run its course

    try:
        asyncio.run(scenario())
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
