"""``SignalDrain``'s decisions on a fake clock: when the drain hands the signal on to uvicorn,
what it logs and when, and how a repeated or late signal is handled. Real signals and real
time are in tests/unit/test_signal_drain.py; here the drain module reads a clock that moves
one step per reading, so every tick lands on a known time and the limits are hit exactly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType, SimpleNamespace

import pytest
import uvicorn

from app.serving import drain
from app.serving.drain import DrainState, SignalDrain
from tests.unit.test_signal_drain import empty_app

BASE_S = 1000.0  # far from 0, so that a sum of two clock readings differs from their difference


class Clock:
    """``time.monotonic`` for the drain module: each reading is ``step_s`` after the previous
    one. The first reading is the signal's, the second the drain's start, and the drain reads
    once per tick after that, so tick ``k`` reads ``started + k * step_s``. ``activity`` maps
    a tick to a callable run just before that tick reads the clock (a request arriving)."""

    def __init__(self, step_s: float, activity: dict[int, object] | None = None) -> None:
        self.step_s = step_s
        self.readings = 0
        self.activity = activity or {}

    def monotonic(self) -> float:
        tick = self.readings - 1  # reading 1 is the drain's start: tick 0
        if tick in self.activity:
            self.activity[tick]()  # type: ignore[operator]
        now = BASE_S + self.step_s * self.readings
        self.readings += 1
        return now

    @property
    def tick(self) -> int:
        return self.readings - 2  # of the last reading


class Listener:
    """Stands for one of uvicorn's ``asyncio.Server`` listeners: notes when it is closed."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.closed_at: list[int] = []

    def close(self) -> None:
        self.closed_at.append(self.clock.tick)


class RecordingServer(uvicorn.Server):
    """uvicorn's server, noting the tick at which the drain hands it each signal."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(uvicorn.Config(empty_app))
        self.clock = clock
        self.exits: list[tuple[int, int]] = []
        self.servers = [Listener(clock), Listener(clock)]  # type: ignore[list-item]

    def closed_at(self) -> list[list[int]]:
        return [listener.closed_at for listener in self.servers]  # type: ignore[attr-defined]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.exits.append((sig, self.clock.tick))
        super().handle_exit(sig, frame)


class Records(logging.Handler):
    """Messages of one logger, each with the clock's tick when it was logged."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(level=logging.DEBUG)
        self.clock = clock
        self.messages: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((self.clock.tick, record.getMessage()))

    def running(self) -> list[int]:
        """Ticks of the once-a-second progress lines."""
        return [
            tick
            for tick, message in self.messages
            if message.startswith("draining: ") and "running" in message
        ]


@contextlib.contextmanager
def recorded(log: logging.Logger, clock: Clock) -> Iterator[Records]:
    records = Records(clock)
    level = log.level
    log.addHandler(records)
    log.setLevel(logging.INFO)
    try:
        yield records
    finally:
        log.removeHandler(records)
        log.setLevel(level)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(step_s=0.125)  # exact in binary: tick k is exactly k / 8 s after the start
    monkeypatch.setattr(drain, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(drain, "TICK_S", 0)  # a tick still yields to the loop, without waiting
    return clock


@pytest.fixture
def server(clock: Clock) -> Iterator[RecordingServer]:
    """The server whose ``handle_exit`` handles SIGTERM and SIGINT, as in ``capture_signals``."""
    server = RecordingServer(clock)
    saved = {sig: signal.signal(sig, server.handle_exit) for sig in drain.HANDLED_SIGNALS}
    try:
        yield server
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def run_drain(server: RecordingServer, clock: Clock, drain_s: float = 10.0) -> Records:
    """One SIGTERM into a drain of ``drain_s``, run until the drain hands it on."""

    async def scenario() -> Records:
        async with SignalDrain(DrainState(), drain_s=drain_s) as signals:
            with recorded(signals.log, clock) as records:
                signals.handle_signal(signal.SIGTERM, None)
                for _ in range(1000):  # bounded: the clock moves one step per tick
                    if server.should_exit:
                        break
                    await asyncio.sleep(0)
                assert server.should_exit
        return records

    return asyncio.run(scenario())


def arrival(server: uvicorn.Server) -> object:
    def arrive() -> None:
        server.server_state.total_requests += 1

    return arrive


def connect(server: uvicorn.Server, connection: object) -> object:
    return lambda: server.server_state.connections.add(connection)  # type: ignore[arg-type]


def answer(server: uvicorn.Server, connection: object) -> object:
    """The connection's one request is answered and, draining, the connection closed."""

    def done() -> None:
        server.server_state.total_requests += 1
        server.server_state.connections.discard(connection)  # type: ignore[arg-type]

    return done


# QUIET_TICKS = 5 ticks and DRAIN_QUIET_S = 0.5 s must both have passed since the last
# activity. With 1/8 s ticks the count decides (5 ticks = 0.625 s); with 1/16 s ticks the
# time does (8 ticks = 0.5 s exactly). At that tick the listeners close; the signal goes
# on to uvicorn one idle tick later, once no accept was under way.
@pytest.mark.parametrize(
    ("step_s", "arrivals", "quiet_tick", "drained_after"),
    [
        (0.125, [], 5, "0.8"),
        (0.0625, [], 8, "0.6"),
        (0.125, [3], 8, "1.1"),  # quiet counted again from tick 3
        (0.0625, [2], 10, "0.7"),
    ],
    ids=["ticks decide", "time decides", "an arrival restarts the count", "an arrival restarts the time"],
)
def test_the_drain_ends_once_quiet_for_both_the_ticks_and_the_time(
    server, clock, step_s, arrivals, quiet_tick, drained_after
):
    clock.step_s = step_s
    clock.activity = {k: arrival(server) for k in arrivals}
    records = run_drain(server, clock)
    assert server.closed_at() == [[quiet_tick], [quiet_tick]]  # stopped accepting once quiet
    assert server.exits == [(signal.SIGTERM, quiet_tick + 1)]
    assert server._captured_signals == [signal.SIGTERM]  # handed on as SIGTERM: uvicorn re-raises it
    assert records.messages[0] == (0, "draining: readiness and new work answer 503 until quiet for 0.5 s")
    assert records.messages[-1] == (quiet_tick + 1, f"drained after {drained_after} s; shutting down")


def test_a_connection_opened_while_draining_holds_the_drain_until_it_is_answered(server, clock):
    # Accepted at tick 1, its request not read yet: closing now would reset it unanswered.
    connection = object()
    clock.activity = {1: connect(server, connection), 7: answer(server, connection)}
    run_drain(server, clock)
    assert server.closed_at() == [[12], [12]]  # quiet counted from its answer at tick 7
    assert server.exits == [(signal.SIGTERM, 13)]


def test_a_keep_alive_connection_idle_since_before_the_signal_does_not_hold_the_drain(server, clock):
    server.server_state.connections.add(object())  # type: ignore[arg-type]  # a proxy's idle pool
    run_drain(server, clock)
    assert server.closed_at() == [[5], [5]]
    assert server.exits == [(signal.SIGTERM, 6)]


@pytest.mark.parametrize("answered_tick", [7, 9])
def test_an_accept_under_way_when_the_listeners_close_is_answered_before_handing_on(
    server, clock, answered_tick
):
    # The listeners close at tick 5; a connection accepted just before shows up at tick 6.
    connection = object()
    clock.activity = {6: connect(server, connection), answered_tick: answer(server, connection)}
    run_drain(server, clock)
    assert server.closed_at() == [[5], [5]]  # closed once, not again
    assert server.exits == [(signal.SIGTERM, answered_tick + 1)]


def test_the_drain_limit_hands_on_while_still_listening_and_leaves_the_close_to_uvicorn(server, clock):
    server.server_state.tasks.add(object())  # type: ignore[arg-type]  # one request never ends
    run_drain(server, clock, drain_s=1.0)
    assert server.exits == [(signal.SIGTERM, 8)]
    assert server.closed_at() == [[], []]


def test_constant_traffic_keeps_the_drain_open_until_drain_s_exactly_and_logs_once_a_second(server, clock):
    clock.step_s = 0.125
    server.server_state.tasks.add(object())  # type: ignore[arg-type]  # one request never ends
    records = run_drain(server, clock, drain_s=2.5)
    assert server.exits == [(signal.SIGTERM, 20)]  # 20 ticks of 1/8 s
    assert records.running() == [10]  # every 10 ticks; the 20th hands on instead
    assert ("draining: 1 request(s) running") in [message for _, message in records.messages]
    assert records.messages[-1] == (20, "drained after 2.5 s; shutting down")


def test_a_long_drain_logs_progress_every_ten_ticks(server, clock):
    clock.step_s = 0.125
    server.server_state.tasks.update({object(), object()})  # type: ignore[arg-type]
    records = run_drain(server, clock, drain_s=4.0)
    assert records.running() == [10, 20, 30]
    assert [m for t, m in records.messages if t == 30] == ["draining: 2 request(s) running"]


def test_the_same_signal_exactly_repeat_s_later_skips_the_drain(server, clock):
    clock.step_s = drain.REPEAT_S  # the second signal reads the clock REPEAT_S after the first

    async def scenario() -> None:
        async with SignalDrain(DrainState(), drain_s=10) as signals:
            signals.handle_signal(signal.SIGTERM, None)  # reading 0
            signals.handle_signal(signal.SIGTERM, None)  # reading 1: not "within" REPEAT_S
            assert server.should_exit

    asyncio.run(scenario())


def test_a_second_signal_reaches_uvicorn_as_itself_and_is_logged_by_the_loop(server, clock):
    async def scenario() -> Records:
        async with SignalDrain(DrainState(), drain_s=10) as signals:
            with recorded(signals.log, clock) as records:
                signals.handle_signal(signal.SIGTERM, None)
                signals.handle_signal(signal.SIGINT, None)
                assert server._captured_signals == [signal.SIGINT]
                assert server.should_exit
                assert not server.force_exit
                for _ in range(3):  # the log line is written by the loop, not in the handler
                    await asyncio.sleep(0)
        return records

    records = asyncio.run(scenario())
    assert "second signal: shutting down without the drain" in [message for _, message in records.messages]


def test_a_signal_while_uvicorn_is_already_stopping_is_uvicorns_own(server, clock):
    async def scenario() -> None:
        async with SignalDrain(DrainState(), drain_s=10) as signals:
            server.should_exit = True  # e.g. the drain has handed on and uvicorn is shutting down
            signals.handle_signal(signal.SIGINT, None)
            assert server._captured_signals == [signal.SIGINT]
            assert server.force_exit  # a second Ctrl+C to uvicorn: stop without waiting

    asyncio.run(scenario())


# -- DrainMiddleware: while draining, each response closes its connection ----------------------

START = "http.response.start"


def through_middleware(
    active: bool, messages: list[dict[str, object]], scope_type: str = "http"
) -> list[dict[str, object]]:
    """What reaches the server when an app behind ``DrainMiddleware`` sends ``messages``."""
    sent: list[dict[str, object]] = []

    async def app(scope: object, receive: object, send) -> None:  # type: ignore[no-untyped-def]
        for message in messages:
            await send(dict(message))

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        raise AssertionError("not read")

    state = DrainState()
    state.active = active
    asyncio.run(drain.DrainMiddleware(app, state)({"type": scope_type}, receive, send))
    return sent


RESPONSE = [
    {
        "type": START,
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"Connection", b"keep-alive")],
    },
    {"type": "http.response.body", "body": b"ok", "headers": [(b"x-not", b"a start")]},
]


def test_a_new_state_is_not_draining():
    assert DrainState().active is False


def test_outside_a_drain_responses_pass_unchanged():
    assert through_middleware(False, RESPONSE) == RESPONSE


def test_while_draining_the_start_says_close_in_place_of_any_connection_header():
    start, body = through_middleware(True, RESPONSE)
    assert start == {
        "type": START,
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"connection", b"close")],
    }
    assert body == RESPONSE[1]  # only the start carries headers that matter


def test_while_draining_a_start_without_headers_gets_the_close_alone():
    (start,) = through_middleware(True, [{"type": START, "status": 204}])
    assert start == {"type": START, "status": 204, "headers": [(b"connection", b"close")]}


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_other_scopes_pass_through_even_while_draining(scope_type):
    assert through_middleware(True, RESPONSE, scope_type) == RESPONSE
