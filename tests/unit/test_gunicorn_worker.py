"""``app.serving.gunicorn.ConvEWMAWorker`` without starting gunicorn: its uvicorn settings and its
check of ``--graceful-timeout``. tests/integration/test_launchers.py runs it for real."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import uvicorn

from app.serving.gunicorn import ConvEWMAWorker, graceful_timeout_needed
from app.serving.protocol import GuardedHttpToolsProtocol
from app.serving.settings import Settings


def test_workers_use_the_connection_guards():
    config = uvicorn.Config(lambda: None, **ConvEWMAWorker.CONFIG_KWARGS)
    config.load()
    assert issubclass(config.http_protocol_class, GuardedHttpToolsProtocol)


def test_graceful_timeout_covers_the_drain_and_the_longest_request(monkeypatch):
    monkeypatch.setenv("CONVEWMA_DRAIN_S", "5")
    monkeypatch.setenv("CONVEWMA_REQUEST_TIMEOUT_S", "30")
    assert graceful_timeout_needed(Settings()) == 40


@pytest.mark.parametrize(("graceful_timeout", "warned"), [(30, True), (39, True), (40, False), (41, False)])
def test_a_graceful_timeout_shorter_than_needed_is_warned_about(
    monkeypatch, caplog, graceful_timeout, warned
):
    monkeypatch.setenv("CONVEWMA_DRAIN_S", "5")
    monkeypatch.setenv("CONVEWMA_REQUEST_TIMEOUT_S", "30")
    log = logging.getLogger("test.gunicorn")
    with caplog.at_level(logging.WARNING, logger="test.gunicorn"):
        ConvEWMAWorker.check_config(SimpleNamespace(graceful_timeout=graceful_timeout), log)
    expected = (
        f"--graceful-timeout {graceful_timeout} s may cut requests short on SIGTERM: "
        "CONVEWMA_DRAIN_S + CONVEWMA_REQUEST_TIMEOUT_S + 5 = 40 s"
    )
    assert caplog.messages == ([expected] if warned else [])  # 40 s exactly is enough
