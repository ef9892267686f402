"""``SignalDrain`` in-process: how it takes over a uvicorn server's signal handlers, when it
hands the signal on, and what it leaves behind. The launchers themselves are exercised
by tests/integration/test_launchers.py."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterator

import pytest
import uvicorn

from app.serving import drain
from app.serving.drain import DrainState, ExitZeroServer, SignalDrain, running_uvicorn_server


async def empty_app(scope: object, receive: object, send: object) -> None:
    raise NotImplementedError


@pytest.fixture
def server() -> Iterator[uvicorn.Server]:
    """A uvicorn server whose ``handle_exit`` handles SIGTERM and SIGINT, as inside
    ``Server.capture_signals``; the test's own handlers come back afterwards."""
    server = uvicorn.Server(uvicorn.Config(empty_app))
    saved = {sig: signal.signal(sig, server.handle_exit) for sig in drain.HANDLED_SIGNALS}
    try:
        yield server
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


async def until(condition: object, limit_s: float = 5.0) -> float:
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - start < limit_s, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def test_finds_the_server_that_handles_the_signals(server):
    assert running_uvicorn_server() == (
        server,
        {signal.SIGINT: server.handle_exit, signal.SIGTERM: server.handle_exit},
    )


def test_no_uvicorn_server_means_no_drain_and_no_handler_change():
    async def scenario() -> None:
        assert running_uvicorn_server() is None
        before = {sig: signal.getsignal(sig) for sig in drain.HANDLED_SIGNALS}
        async with SignalDrain(DrainState(), drain_s=5) as signals:
            assert signals.server is None
            assert {sig: signal.getsignal(sig) for sig in drain.HANDLED_SIGNALS} == before

    asyncio.run(scenario())


def test_first_signal_drains_until_quiet_then_reaches_uvicorn(server):
    state = DrainState()

    async def scenario() -> None:
        async with SignalDrain(state, drain_s=5) as signals:
            assert signal.getsignal(signal.SIGTERM) == signals.handle_signal
            signal.raise_signal(signal.SIGTERM)
            assert state.active  # at once: readiness and new work answer 503
            assert not server.should_exit
            signal.raise_signal(signal.SIGTERM)  # the same signal again at once: the same stop
            took = await until(lambda: server.should_exit)
            assert drain.DRAIN_QUIET_S - 0.05 <= took < drain.DRAIN_QUIET_S + 1.0
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit  # restored

    asyncio.run(scenario())


def test_traffic_keeps_the_drain_open_until_its_limit(server):
    async def scenario() -> None:
        async with SignalDrain(DrainState(), drain_s=1.0):
            signal.raise_signal(signal.SIGTERM)
            start = time.monotonic()
            while not server.should_exit and time.monotonic() - start < 5:
                server.server_state.total_requests += 1  # a request arrives every 0.05 s
                await asyncio.sleep(0.05)
            took = time.monotonic() - start
            assert server.should_exit
            assert 0.9 <= took < 2.0, took

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("first", "second"), [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)]
)
def test_a_second_signal_skips_the_drain(server, first, second):
    async def scenario() -> None:
        async with SignalDrain(DrainState(), drain_s=5):
            signal.raise_signal(first)
            await asyncio.sleep(0.05)
            assert not server.should_exit
            signal.raise_signal(second)
            assert server.should_exit

    asyncio.run(scenario())


def test_the_same_signal_again_after_a_while_skips_the_drain(server, monkeypatch):
    monkeypatch.setattr(drain, "REPEAT_S", 0.1)

    async def scenario() -> None:
        async with SignalDrain(DrainState(), drain_s=5):
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            assert not server.should_exit
            signal.raise_signal(signal.SIGTERM)
            assert server.should_exit

    asyncio.run(scenario())


def test_no_drain_when_drain_s_is_zero(server):
    async def scenario() -> None:
        async with SignalDrain(DrainState(), drain_s=0):
            assert signal.getsignal(signal.SIGTERM) == server.handle_exit

    asyncio.run(scenario())


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_exit_zero_server_does_not_re_raise_the_signal(first):
    server = ExitZeroServer(uvicorn.Config(empty_app))
    server.handle_exit(first, None)  # a first Ctrl+C too asks for a graceful stop
    assert server.should_exit
    assert not server.force_exit
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit  # a second Ctrl+C: do not wait for open connections
    assert server._captured_signals == []  # what uvicorn re-raises after shutting down


def test_a_drain_shorter_than_a_second_still_takes_over_the_signals(server):
    async def scenario() -> None:
        async with SignalDrain(DrainState(), drain_s=0.5) as signals:
            assert signal.getsignal(signal.SIGTERM) == signals.handle_signal

    asyncio.run(scenario())


def test_without_a_server_the_drain_says_so_at_debug_level():
    async def scenario() -> None:
        async with SignalDrain(DrainState(), drain_s=5):
            pass

    # A handler on the logger itself: a CLI test may have configured it not to propagate.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    level = drain.logger.level
    drain.logger.addHandler(handler)
    drain.logger.setLevel(logging.DEBUG)
    try:
        asyncio.run(scenario())
    finally:
        drain.logger.removeHandler(handler)
        drain.logger.setLevel(level)
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.DEBUG, "no uvicorn server handles SIGTERM here: no drain on signals")
    ]


@pytest.mark.parametrize("configured", [True, False], ids=["convewma serve", "another launcher"])
def test_the_drain_logs_to_convewma_when_it_is_configured_else_to_uvicorns_error_log(monkeypatch, configured):
    monkeypatch.setattr(drain.logger, "hasHandlers", lambda: configured)
    signals = SignalDrain(DrainState(), drain_s=5)
    assert signals.log is (drain.logger if configured else logging.getLogger("uvicorn.error"))


def test_leaving_in_the_middle_of_a_drain_stops_it_quietly_and_restores_uvicorn(server):
    state = DrainState()

    async def scenario() -> None:
        async with SignalDrain(state, drain_s=30) as signals:
            signal.raise_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)  # the watch is running
            assert signals._watch is not None
            assert not signals._watch.done()
            watch = signals._watch
        assert watch.cancelled()
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
        assert not server.should_exit  # the drain never handed the signal on

    asyncio.run(scenario())
    assert state.active


def test_only_a_uvicorn_servers_own_handler_counts(server):
    # Another callable on SIGINT (a plain function, or a method of something else) is not
    # a server: SIGTERM's uvicorn handler alone is found.
    def plain(sig: int, frame: object) -> None:
        raise AssertionError("not called")

    for other in (plain, DrainState().begin):
        signal.signal(signal.SIGINT, other)  # type: ignore[arg-type]
        assert running_uvicorn_server() == (server, {signal.SIGTERM: server.handle_exit})
