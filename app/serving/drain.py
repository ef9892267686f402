"""Graceful shutdown: drain before uvicorn closes its listener, under any launcher.

On SIGTERM plain uvicorn closes the listening socket at once. Connections the kernel
has accepted but the event loop has not yet picked up are then reset, and so is an idle
keep-alive connection that a client reuses at that moment: a client sees a reset rather
than an answer. ``SignalDrain`` delays that close. It first enters a drain window in
which readiness is 503, new ``/smooth`` requests get 503 with ``Retry-After`` and every
response carries ``Connection: close``, so that load balancers and clients move on,
while requests already accepted finish normally. The window ends once no request has
been running or arriving, and no connection opened since the signal is still open, for
``DRAIN_QUIET_S``, or after ``drain_s`` at most. The drain then stops accepting at once,
answers a connection whose accept was already under way, and only then does uvicorn's
own graceful shutdown run: finish open responses, close idle connections, run the
lifespan shutdown, which drains the batcher. Under gunicorn the workers share one
listening socket: a worker that stops accepting leaves new connections to the others.
What remains is HTTP/1.1's own race: a keep-alive connection idle since before the signal
is closed by that shutdown, and a client reusing it at that instant sees a reset (clients
and proxies retry idempotent requests only); the drain cannot tell it from an idle pool.

The drain belongs to the app, not to one launcher: the lifespan enters ``SignalDrain``,
which finds the running ``uvicorn.Server`` through the SIGTERM/SIGINT handler that
``Server.capture_signals`` installed before the lifespan started (``convewma serve``,
``uvicorn app.main:app``, and each worker of ``gunicorn -k uvicorn_worker.UvicornWorker``
all run a ``uvicorn.Server`` in the main thread), puts its own handler in front, and
hands the signal on to uvicorn once drained. Where no uvicorn server handles the
signals (the test client, another ASGI server) it does nothing.

Exit status: uvicorn re-raises the signal once shut down, so ``uvicorn app.main:app``
ends with -15 (143 in a shell), which gunicorn expects of its workers; gunicorn's master
then exits 0. ``convewma serve`` runs ``ExitZeroServer``, which does not re-raise: 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

import uvicorn

from app.serving.metrics import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("convewma")
DRAIN_QUIET_S = 0.5  # no request running or arriving for this long ends the drain early
# The same signal again this soon is the same request to stop, not a second one: systemd
# (KillMode=control-group) and `tini -g` signal every process of the group, and gunicorn's
# master then forwards the signal to its workers a moment later.
REPEAT_S = 1.0
TICK_S = 0.1  # how often the drain looks at the server's activity, as uvicorn's main loop
QUIET_TICKS = round(DRAIN_QUIET_S / TICK_S)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

SignalHandler = Callable[[int, FrameType | None], Any]


class DrainState:
    """Shared by the signal handler (which starts the drain) and the app (which acts on it)."""

    def __init__(self) -> None:
        self.active = False

    def begin(self) -> None:
        self.active = True


class DrainMiddleware:
    """While draining, every response asks the client to close its connection."""

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def close_when_draining(message: Message) -> None:
            if message["type"] == "http.response.start" and self.state.active:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message["headers"] = [*headers, (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, close_when_draining)


def running_uvicorn_server() -> tuple[uvicorn.Server, dict[int, SignalHandler]] | None:
    """The ``uvicorn.Server`` whose ``handle_exit`` handles SIGTERM/SIGINT in this process,
    with those handlers; None if there is none or this is not the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread receives signals and may set handlers
    server: uvicorn.Server | None = None
    handlers: dict[int, SignalHandler] = {}
    for sig in HANDLED_SIGNALS:
        handler = signal.getsignal(sig)
        owner = getattr(handler, "__self__", None)
        if callable(handler) and isinstance(owner, uvicorn.Server) and (server is None or owner is server):
            server = owner
            handlers[sig] = handler  # the server's bound handle_exit
    return None if server is None else (server, handlers)


class SignalDrain:
    """``async with SignalDrain(state, drain_s):`` in the lifespan: while inside, the first
    SIGTERM or SIGINT begins a drain of ``state`` and reaches uvicorn's own handler only
    once the server has been quiet for ``DRAIN_QUIET_S`` (``drain_s`` at most). A second
    signal goes straight to uvicorn: stop now (a second SIGINT: without waiting for open
    responses). Leaving restores uvicorn's handlers."""

    def __init__(self, state: DrainState, drain_s: float) -> None:
        self.state = state
        self.drain_s = drain_s
        self.server: uvicorn.Server | None = None
        self._originals: dict[int, SignalHandler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signal: int | None = None  # the first signal, handed on once drained
        self._signalled_at = 0.0
        self._watch: asyncio.Task[None] | None = None
        # `convewma serve` configures the "convewma" logger; other launchers configure only
        # uvicorn's (gunicorn's UvicornWorker routes it to its error log): log the drain there.
        self.log = logger if logger.hasHandlers() else logging.getLogger("uvicorn.error")

    async def __aenter__(self) -> SignalDrain:
        found = running_uvicorn_server() if self.drain_s > 0 else None
        if found is None:
            logger.debug("no uvicorn server handles SIGTERM here: no drain on signals")
            return self
        self.server, self._originals = found
        self._loop = asyncio.get_running_loop()
        for sig in self._originals:
            signal.signal(sig, self.handle_signal)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, original in self._originals.items():
            if signal.getsignal(sig) == self.handle_signal:  # nobody replaced it since
                signal.signal(sig, original)
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    def handle_signal(self, sig: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread, maybe inside the event loop's own
        # code: only set flags here and let the loop start the watch.
        now = time.monotonic()
        assert self.server is not None
        if self.server.should_exit:  # already shutting down: uvicorn decides (force exit)
            self._originals[sig](sig, frame)
        elif self._signal is None:
            self._signal, self._signalled_at = sig, now
            self.state.begin()
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._start_watch)
        elif sig == self._signal and now - self._signalled_at < REPEAT_S:
            return  # the same request to stop, delivered twice
        else:
            assert self._loop is not None  # not logged here: the signal may interrupt a log write
            self._loop.call_soon_threadsafe(self.log.info, "second signal: shutting down without the drain")
            self._originals[sig](sig, frame)

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        server, sig = self.server, self._signal
        assert server is not None
        assert sig is not None
        state = server.server_state
        started = last_activity = time.monotonic()
        last_count = state.total_requests
        # Keep-alive connections open at the signal may stay idle for good (a proxy's pool):
        # they do not hold the drain. One opened since is a client about to send, or sending.
        before = frozenset(state.connections)
        self.log.info("draining: readiness and new work answer 503 until quiet for %g s", DRAIN_QUIET_S)
        ticks = 1
        idle_ticks = 0
        listening = True
        while not server.should_exit:
            now = time.monotonic()
            newcomers = not state.connections <= before
            if state.tasks or newcomers or state.total_requests != last_count:
                last_count, last_activity, idle_ticks = state.total_requests, now, 0
            else:
                idle_ticks += 1
            # Quiet is counted in ticks as well as in time: when the event loop is starved
            # (a busy CPU), one late tick spans 0.5 s in which arrivals sat unaccepted in
            # the listen backlog; closing then would reset them. Each tick yields to the
            # loop, so several idle ticks in a row mean nothing was waiting.
            quiet = idle_ticks >= QUIET_TICKS and now - last_activity >= DRAIN_QUIET_S
            if listening and quiet:
                # Stop accepting in this very step, before uvicorn's next look at should_exit
                # (up to a tick later) does: a connection accepted in between would be closed
                # unanswered. One more idle tick then lets an accept already under way show up
                # as a newcomer, which is answered (with Connection: close) before handing on.
                listening = False
                for listener in getattr(server, "servers", ()):
                    listener.close()
            elif (not listening and idle_ticks >= 1) or now - started >= self.drain_s:
                self.log.info("drained after %.1f s; shutting down", now - started)
                self._originals[sig](sig, None)
                return
            if ticks % 10 == 0:  # once a second
                self.log.info("draining: %d request(s) running", len(state.tasks))
            ticks += 1
            await asyncio.sleep(TICK_S)


class ExitZeroServer(uvicorn.Server):
    """``uvicorn.Server`` that does not re-raise the stopping signal once shut down, so
    that a graceful stop exits 0 (``convewma serve``). Signals are uvicorn's otherwise:
    the first asks for a graceful shutdown, a second SIGINT forces it."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
