"""Connection guards for uvicorn's httptools protocol: idle and header timeouts, sizes, connection count.

uvicorn alone lets a client hold a connection for ever before its first request (its
keep-alive timeout starts only after a response), send headers byte by byte, send
megabytes of headers (httptools buffers them all), or open sockets until the process
runs out of file descriptors. ``http_protocol(settings)`` returns uvicorn's
``HttpToolsProtocol`` extended with the limits below; ``convewma serve`` passes it as
``uvicorn.Config(http=...)``:

- idle: a connection with no request in progress (before its first request or between
  two) is closed after ``idle_timeout_s``; uvicorn's keep-alive timer, armed from the
  moment the connection opens and no longer restarted by bytes that begin no request;
- headers: from a request's first byte to the end of its headers at most
  ``header_timeout_s`` (else 408), and at most ``max_header_bytes`` of request line and
  headers (else 431, checked as they arrive, so no more than one more read is buffered);
- connections: with ``max_connections`` open, a new one is answered 503 with
  ``Retry-After: 1`` at once.

Each of these answers is ``{"detail": "..."}`` JSON with ``Connection: close``; the
connection is then half-closed and its input read and dropped for a short while (at most
``LINGER_S`` and ``LINGER_BYTES``): closing with unread input makes the kernel send a
reset, which can destroy the answer before the client reads it (RFC 9112, 9.6). Body pauses
(``body_timeout_s``) and requests in progress (``max_concurrency``) are the app's.

Plain uvicorn. ``uvicorn app.main:app`` has none of this unless asked:
``uvicorn app.main:app --http app.serving.protocol:HttpProtocol`` applies the same limits, read
from the ``CONVEWMA_*`` variables (the drain on SIGTERM is the app's own; not the open-files
limit, which ``convewma serve`` raises to the hard limit; use ``ulimit -n``). uvicorn's
own flags only approximate them: ``--timeout-keep-alive 10`` closes idle connections
between requests, but not before the first one; ``--limit-concurrency 1000`` answers 503
(plain text) once that many connections or requests are open, but only after reading a
request's headers, so idle sockets still pile up; ``--http h11
--h11-max-incomplete-event-size 65536`` answers 400 to larger headers (h11 is slower than
httptools). No uvicorn flag bounds the time headers take.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.serving.settings import Settings

logger = logging.getLogger("convewma")

LINGER_S = 2.0  # after answering a connection we close, drop its input for at most this long
LINGER_BYTES = 65_536  # ... and at most this much of it
REFUSAL_LOG_EVERY_S = 10.0  # one log line per period, not one per refused connection


class HeadersTooLargeError(Exception):
    """Raised in a parser callback to stop httptools at once."""


@dataclass
class ConnectionGuard:
    """The limits, and what all connections of one server share."""

    max_connections: int
    max_header_bytes: int
    header_timeout_s: float
    idle_timeout_s: float
    refused_open: int = 0  # refused connections not closed yet: they hold descriptors too
    refused_unlogged: int = 0
    refusal_logged_at: float = -math.inf


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of ``guard`` (see the module docstring)."""

    guard: ClassVar[ConnectionGuard]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn types it int (its CLI flag); call_later takes the setting's float as is.
        self.timeout_keep_alive = self.guard.idle_timeout_s  # type: ignore[assignment]
        self._header_timer: asyncio.TimerHandle | None = None  # set while headers arrive
        self._header_bytes = 0  # reads that went entirely to the current request's headers
        self._message_completed = False  # in the current read
        self._discard_left: int | None = None  # set once answered: input is dropped
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refused = False

    # Connection limit and idle timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.guard.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer after a response only; arm it for the first request too.
        self._arm_idle_timer()

    def _refuse(self, transport: asyncio.Transport) -> None:
        # Not added to self.connections, so a refused connection never counts as open.
        self.transport = transport
        self.flow = FlowControl(transport)
        self._refused = True
        guard = self.guard
        guard.refused_open += 1
        guard.refused_unlogged += 1
        now = time.monotonic()
        if now - guard.refusal_logged_at >= REFUSAL_LOG_EVERY_S:
            logger.warning(
                "max_connections (%d) open: refused %d connection(s) with 503",
                guard.max_connections,
                guard.refused_unlogged,
            )
            guard.refusal_logged_at, guard.refused_unlogged = now, 0
        self._answer_and_close(503, "server busy: too many open connections", (b"retry-after", b"1"))
        if guard.refused_open > guard.max_connections:
            # A flood: lingering refused connections must not exhaust descriptors in turn.
            transport.close()

    def _arm_idle_timer(self) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        # Close only a connection with no request in progress: a request whose headers are
        # arriving has the header timeout, one being answered the app's timeouts.
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            super().timeout_keep_alive_handler()

    # Reading requests

    def data_received(self, data: bytes) -> None:
        # uvicorn's, except that bytes no longer restart the idle timer (a client sending
        # "\r\n" now and then would hold the connection for ever): a request's first byte
        # stops it (on_message_begin).
        if self._discard_left is not None:
            self._discard_left -= len(data)
            if self._discard_left < 0:
                self.transport.close()
            return
        self._message_completed = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadersTooLargeError):
                self._reject(431, f"request headers exceed {self.guard.max_header_bytes} bytes")
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._header_timer is not None and not self._message_completed:
            # Headers still incomplete and no request ended in this read: the whole read
            # was request line and headers. (After a pipelined request ends mid-read, the
            # rest of that read is not counted: it is bounded by the read size, and
            # on_headers_complete measures the headers exactly.)
            self._header_bytes += len(data)
            if self._header_bytes > self.guard.max_header_bytes:
                self._reject(431, f"request headers exceed {self.guard.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._unset_keepalive_if_required()
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._header_timeout)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._unset_keepalive_if_required()  # armed by a response that ended while these arrived
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.guard.max_header_bytes:
            raise HeadersTooLargeError  # stops the parser; data_received answers 431
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._message_completed = True
        super().on_message_complete()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier pipelined request is still being answered, and uvicorn may have
            # stopped reading until it is: the wait is ours, so start the count again.
            self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._header_timeout)
            return
        self._reject(408, f"request headers not complete within {self.guard.header_timeout_s:g} s")

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    # Answering and closing

    def _reject(self, status: int, detail: str) -> None:
        self._cancel_header_timer()
        if self.transport.is_closing():
            return
        client = "{}:{} - ".format(*self.client) if self.client else ""
        self.logger.warning("%s%d: %s", client, status, detail)
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier pipelined request is being answered and a second response cannot
            # be interleaved with it: close once it is sent; drop input until then.
            self.cycle.keep_alive = False
            self._discard_left = LINGER_BYTES
            return
        self._answer_and_close(status, detail)

    def _answer_and_close(self, status: int, detail: str, *headers: tuple[bytes, bytes]) -> None:
        self._unset_keepalive_if_required()
        body = json.dumps({"detail": detail}).encode()
        fields = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *headers,
        ]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
        self.transport.write(STATUS_LINE[status] + head + b"\r\n" + body)
        # Lingering close (RFC 9112 section 9.6; nginx does it): close() with unread input
        # sends RST, which can drop this answer from the server's send queue or the
        # client's receive buffer before the client reads it. Send FIN after the answer
        # instead, drop what still arrives for a bounded time and size, then close; a
        # client that closes its side first (eof_received) ends it sooner.
        self._discard_left = LINGER_BYTES
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:  # TLS: no half-close
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self._refused:
            self.guard.refused_open -= 1
            self._refused = False
        super().connection_lost(exc)


def http_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to these settings."""
    shared = ConnectionGuard(
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        idle_timeout_s=settings.idle_timeout_s,
    )

    class BoundHttpToolsProtocol(GuardedHttpToolsProtocol):
        guard = shared

    return BoundHttpToolsProtocol


def raise_open_files_limit() -> int | None:
    """Raise the soft open-files limit to the hard one; the soft limit in effect (None: unknown)."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # Fails where the hard limit is unlimited and the kernel caps it lower (macOS).
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def __getattr__(name: str) -> type[GuardedHttpToolsProtocol]:
    # `uvicorn app.main:app --http app.serving.protocol:HttpProtocol` binds the protocol to the
    # environment's settings on first access, as app.main does for `app`.
    if name == "HttpProtocol":
        protocol = http_protocol(Settings())
        globals()["HttpProtocol"] = protocol
        return protocol
    raise AttributeError(name)
