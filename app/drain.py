"""Graceful shutdown: drain before uvicorn closes its listener.

On SIGTERM plain uvicorn closes the listening socket at once. Connections the kernel
has accepted but the event loop has not yet picked up are then reset, and so is an idle
keep-alive connection that a client reuses at that moment: a client sees a reset rather
than an answer. ``DrainingServer`` delays that close. It first enters a drain window in
which readiness is 503, new ``/smooth`` requests get 503 with ``Retry-After`` and every
response carries ``Connection: close``, so that load balancers and clients move on,
while requests already accepted finish normally. The window ends once no request has
been running or arriving for ``DRAIN_QUIET_S``, or after ``drain_s`` at most. Only then
does uvicorn's own graceful shutdown run: stop listening, finish open responses, run the
lifespan shutdown, which drains the batcher. The process then exits 0.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from app.metrics import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("convewma")
DRAIN_QUIET_S = 0.5  # no request running or arriving for this long ends the drain early


class DrainState:
    """Shared by the server (which starts the drain) and the app (which acts on it)."""

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


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose first SIGTERM/SIGINT drains before shutting down."""

    def __init__(self, config: uvicorn.Config, state: DrainState, drain_s: float) -> None:
        super().__init__(config)
        self.drain = state
        self.drain_s = drain_s
        self._drain_started_at: float | None = None
        self._last_request_count = 0
        self._last_activity = 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler: only set flags; on_tick does the rest. The signal is
        # not re-raised after shutdown (uvicorn's default), so a drained exit is status 0.
        if self._drain_started_at is None and self.drain_s > 0:
            self._drain_started_at = self._last_activity = time.monotonic()
            self.drain.begin()
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True  # a second signal ends the drain now

    async def on_tick(self, counter: int) -> bool:
        started = self._drain_started_at
        if started is not None and not self.should_exit:
            if counter % 10 == 0:  # on_tick runs every 0.1 s; log once a second
                logger.info("draining: %d request(s) running", len(self.server_state.tasks))
            now = time.monotonic()
            if self.server_state.tasks or self.server_state.total_requests != self._last_request_count:
                self._last_request_count = self.server_state.total_requests
                self._last_activity = now
            if now - self._last_activity >= DRAIN_QUIET_S or now - started >= self.drain_s:
                logger.info("drained after %.1f s; shutting down", now - started)
                self.should_exit = True
        return await super().on_tick(counter)
