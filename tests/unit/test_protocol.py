"""app/serving/protocol.py byte for byte and at its limits, on `convewma serve`'s uvicorn
configuration in a thread: the exact answers, the header byte counts at the boundary, what
is counted as header bytes, lingering close, the refused-connection accounting and its log.
The server object is at hand here, so a test can read which connections it still holds.
tests/api/test_connections.py covers the same guards from a client's point of view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.serving import protocol
from app.serving.protocol import ConnectionGuard
from app.serving.settings import Settings
from tests.servers import free_port, kept_loggers, wait_ready

IDLE_S = 1.0
HEADER_S = 1.0
MAX_CONNECTIONS = 3
LIMIT = 65_536  # max_header_bytes
GET = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


class Server(SimpleNamespace):
    address: tuple[str, int]
    server: uvicorn.Server
    guard: ConnectionGuard
    logs: list[tuple[str, str]]  # (logger, message)

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)

    def messages(self, logger: str) -> list[str]:
        return [message for name, message in self.logs if name == logger]


class ListHandler(logging.Handler):
    def __init__(self, logs: list[tuple[str, str]]) -> None:
        super().__init__(level=logging.DEBUG)
        self.logs = logs

    def emit(self, record: logging.LogRecord) -> None:
        self.logs.append((record.name, record.getMessage()))


@pytest.fixture(scope="module")
def served() -> Iterator[Server]:
    from app.cli.serve import server_config

    with kept_loggers():
        port = free_port()
        settings = Settings(
            host="127.0.0.1",
            port=port,
            device="cpu",
            idle_timeout_s=IDLE_S,
            header_timeout_s=HEADER_S,
            max_connections=MAX_CONNECTIONS,
            max_header_bytes=LIMIT,
        )
        config = server_config(settings)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            logs: list[tuple[str, str]] = []
            handler = ListHandler(logs)
            for name in ("uvicorn.error", "convewma"):
                logging.getLogger(name).addHandler(handler)
            yield Server(address=("127.0.0.1", port), server=server, guard=config.http.guard, logs=logs)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    assert not thread.is_alive()


def until(condition: Callable[[], bool], limit_s: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit_s, "condition not met in time"
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def server(served: Server) -> Server:
    """The module's server once nothing of an earlier test is open or lingering."""
    until(lambda: served.open_connections() == 0 and served.guard.refused_open == 0)
    served.logs.clear()
    return served


@contextlib.contextmanager
def connect(server: Server) -> Iterator[socket.socket]:
    with socket.create_connection(server.address, timeout=10) as sock:
        yield sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """Status and body of each response in ``data`` (content-length framed)."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:")
        )
        out.append((int(lines[0].split()[1]), rest[:length]))
        data = rest[length:]
    return out


def head_lines(data: bytes) -> list[bytes]:
    """The response's head without its date (which changes)."""
    head = data.partition(b"\r\n\r\n")[0]
    return [line for line in head.split(b"\r\n") if not line.startswith(b"date: ")]


def guard_answer(status_line: bytes, detail: str, *extra: bytes) -> tuple[list[bytes], bytes]:
    body = json.dumps({"detail": detail}).encode()
    head = [
        status_line,
        b"server: uvicorn",
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *extra,
    ]
    return head, body


# -- the answers, exactly -------------------------------------------------------------------------


def test_a_refused_connection_gets_exactly_this_503(server):
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):
            stack.enter_context(connect(server))
        until(lambda: server.open_connections() == MAX_CONNECTIONS)
        with connect(server) as extra:
            data = read_all(extra)
    head, body = guard_answer(
        b"HTTP/1.1 503 Service Unavailable", "server busy: too many open connections", b"retry-after: 1"
    )
    assert head_lines(data) == head
    assert data.partition(b"\r\n\r\n")[2] == body


def test_invalid_http_is_400_and_logged(server):
    with connect(server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\x00\r\n\r\n")
        data = read_all(sock)
    assert responses(data) == [(400, b"Invalid HTTP request received.")]
    assert "Invalid HTTP request received." in server.messages("uvicorn.error")


def test_a_header_timeout_after_a_kept_alive_response_is_a_408_and_logged(server):
    with connect(server) as sock:
        sock.sendall(GET)
        port = sock.getsockname()[1]
        time.sleep(0.2)  # answered; the connection is kept
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")  # and never finished
        data = read_all(sock)
    assert [status for status, _ in responses(data)] == [200, 408]
    detail = f"request headers not complete within {HEADER_S:g} s"
    assert responses(data)[1][1] == json.dumps({"detail": detail}).encode()
    assert f"127.0.0.1:{port} - 408: {detail}" in server.messages("uvicorn.error")


# -- header bytes: counted as they arrive, at the limit exactly -----------------------------------


def test_headers_over_the_limit_are_refused_before_they_end(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for i in range(10):  # 80 KB in separate reads, never ending the headers
                sock.sendall(b"".join(b"X-F%05d: %s\r\n" % (i * 8 + j, b"a" * 990) for j in range(8)))
                time.sleep(0.02)
        data = read_all(sock)
    assert responses(data) == [
        (431, json.dumps({"detail": f"request headers exceed {LIMIT} bytes"}).encode())
    ]
    assert time.monotonic() - started < HEADER_S  # not the header timeout


def test_exactly_the_limit_of_unfinished_header_bytes_is_allowed(server):
    start = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: "
    with connect(server) as sock:
        sock.sendall(start + b"a" * (LIMIT - len(start) - 2) + b"\r\n")  # LIMIT bytes, headers not ended
        time.sleep(0.2)  # a read of its own for the end
        sock.sendall(b"\r\n")
        status, body = responses(sock.recv(65536))[0]
    assert (status, json.loads(body)) == (200, {"status": "ok"})


@pytest.mark.parametrize(("size", "status"), [(LIMIT, 200), (LIMIT + 1, 431)])
def test_complete_headers_are_measured_as_url_plus_names_and_values_plus_4(server, size, status):
    # url "/healthz" (8) + "host"+"test"+4 (12) + "x-pad"+value+4: the size of the request
    # without its method, version and line ends.
    pad = size - 8 - 12 - (5 + 4)
    request = b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-pad: " + b"a" * pad + b"\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(request)
        data = read_all(sock) if status == 431 else sock.recv(65536)
    assert responses(data)[0][0] == status


def test_a_large_body_is_not_counted_as_header_bytes(server):
    body = json.dumps({"series": [[float(i % 97) for i in range(30_000)]]}).encode()
    assert len(body) > 2 * LIMIT
    with connect(server) as sock:
        sock.sendall(
            b"POST /smooth HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), 8192):  # in many reads, none ending a request
            sock.sendall(body[i : i + 8192])
            time.sleep(0.005)
        reader = sock.makefile("rb")
        status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 200 "), status_line


# -- idle timer while a pipelined request is in progress -----------------------------------------


def test_the_idle_timer_does_not_close_a_connection_whose_request_is_in_progress(server):
    body = b'{"series": [[1, 2, 3, 4]]}'
    post = (
        b"POST /smooth HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    )
    with connect(server) as sock:
        # The GET's answer arms the idle timer while the POST, pipelined behind it, waits for its body.
        sock.sendall(GET + post % len(body) + body[:5])
        time.sleep(IDLE_S * 1.5)
        sock.sendall(body[5:])
        reader = sock.makefile("rb")
        statuses = []
        for _ in range(2):
            statuses.append(int(reader.readline().split()[1]))
            while reader.readline() not in (b"\r\n", b""):
                pass
            if statuses[-1] == 200 and len(statuses) == 1:
                reader.read(len(b'{"status":"ok"}'))
        assert statuses == [200, 200]
        sock.settimeout(IDLE_S + 3)
        started = time.monotonic()
        reader.read()  # the rest of the POST's answer, then the close once idle
        assert time.monotonic() - started < IDLE_S + 2
    assert not [m for m in server.messages("uvicorn.error") if "Exception" in m]


# -- lingering close -------------------------------------------------------------------------------


def answered_408(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
    assert responses(read_all(sock))[0][0] == 408  # read to the server's FIN


def test_input_after_an_answer_is_dropped_up_to_linger_bytes_then_closed(server):
    with connect(server) as sock:
        answered_408(sock)
        sock.sendall(b"x" * protocol.LINGER_BYTES)  # dropped, still lingering
        time.sleep(0.3)
        assert server.open_connections() == 1
        sock.sendall(b"x")  # one byte more: closed
        took = until(lambda: server.open_connections() == 0)
    assert took < protocol.LINGER_S / 2


def test_a_lingering_connection_is_closed_after_linger_s(server, monkeypatch):
    monkeypatch.setattr(protocol, "LINGER_S", 0.5)
    with connect(server) as sock:
        answered_408(sock)
        started = time.monotonic()
        until(lambda: server.open_connections() == 0)  # the client keeps its side open
        assert 0.4 <= time.monotonic() - started < 2.0


# -- refused connections: accounting, flood, log ---------------------------------------------------


def test_refused_connections_are_counted_until_closed_and_a_flood_is_closed_at_once(server):
    assert server.guard.refused_open == 0
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):
            stack.enter_context(connect(server))
        until(lambda: server.open_connections() == MAX_CONNECTIONS)
        refused = [stack.enter_context(connect(server)) for _ in range(MAX_CONNECTIONS)]
        until(lambda: server.guard.refused_open == MAX_CONNECTIONS)  # all linger
        assert server.open_connections() == MAX_CONNECTIONS  # refused ones never count as open
        with connect(server) as flood:  # one more than max_connections refused: closed at once
            read_all(flood)
            time.sleep(0.1)
            assert server.guard.refused_open == MAX_CONNECTIONS
        for sock in refused:
            sock.close()
        until(lambda: server.guard.refused_open == 0)
    until(lambda: server.open_connections() == 0)
    assert server.guard.refused_open == 0


def test_refusals_are_logged_once_per_period_with_their_count(server, monkeypatch):
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(protocol, "time", SimpleNamespace(monotonic=lambda: clock.now))
    monkeypatch.setattr(server.guard, "refusal_logged_at", -math.inf)
    monkeypatch.setattr(server.guard, "refused_unlogged", 0)
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):
            stack.enter_context(connect(server))
        until(lambda: server.open_connections() == MAX_CONNECTIONS)
        for now in (100.0, 105.0, 109.9, 110.0):  # logged at 100, then at 110 for three
            clock.now = now
            with connect(server) as extra:
                read_all(extra)
    template = "max_connections (%d) open: refused %d connection(s) with 503"
    assert server.messages("convewma") == [template % (MAX_CONNECTIONS, 1), template % (MAX_CONNECTIONS, 3)]
    assert server.guard.refused_unlogged == 0


# -- one connection driven read by read, without a socket ----------------------------------------
# A socket cannot say how the server's reads split what a client sent; here each call to
# data_received is one read, so the counting of header bytes per read is exact.


async def ok_app(scope: object, receive: Callable[..., object], send: Callable[..., object]) -> None:
    more = True
    while more:
        message = await receive()  # type: ignore[misc]
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})  # type: ignore[misc]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[misc]


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed or half-closed the connection."""

    def __init__(self, peer: tuple[str, int] | None) -> None:
        super().__init__()
        self.peer = peer
        self.written = bytearray()
        self.closing = self.eof = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def reads(*chunks: bytes, peer: tuple[str, int] | None = ("127.0.0.1", 5000)) -> Transport:
    """``chunks`` as the successive reads of one connection, each answered before the next."""

    async def scenario() -> Transport:
        config = uvicorn.Config(ok_app, lifespan="off", log_config=None)
        config.load()
        guarded = protocol.http_protocol(Settings(device="cpu", max_header_bytes=LIMIT))
        connection = guarded(config=config, server_state=ServerState(), app_state={})
        transport = Transport(peer)
        connection.connection_made(transport)
        for chunk in chunks:
            connection.data_received(chunk)
            await asyncio.sleep(0.05)  # the app answers what is complete
        connection.connection_lost(None)
        return transport

    return asyncio.run(scenario())


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
BIG_POST = b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (2 * LIMIT, b"x" * 2 * LIMIT)


def test_a_read_that_ends_a_request_is_not_counted_as_the_next_ones_headers():
    # One read: a request with a body twice the header limit, then the start of the next.
    transport = reads(BIG_POST + b"GET /g HTTP/1.1\r\nHost: t", b"\r\n\r\n")
    assert bytes(transport.written) == OK + OK


@pytest.mark.parametrize("peer", [("127.0.0.1", 5000), None], ids=["tcp", "no peer address"])
def test_headers_too_large_behind_a_request_in_progress_close_after_its_answer(peer):
    # The 431 cannot be sent in the middle of the first answer: that answer ends the
    # connection instead, and what arrives after it is dropped.
    too_large = b"GET /g HTTP/1.1\r\nHost: t\r\nX-Pad: %s\r\n\r\n" % (b"a" * LIMIT)
    logs: list[tuple[str, str]] = []
    log = logging.getLogger("uvicorn.error")  # uvicorn's own logging config may stop propagation
    handler, level = ListHandler(logs), log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    try:
        transport = reads(BIG_POST + too_large, b"GET /h HTTP/1.1\r\nHost: t\r\n\r\n", peer=peer)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert bytes(transport.written) == OK.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    assert transport.closing
    prefix = "127.0.0.1:5000 - " if peer else ""
    assert logs == [("uvicorn.error", f"{prefix}431: request headers exceed {LIMIT} bytes")]


def test_a_header_timeout_behind_a_slow_answer_waits_for_it_then_answers_408():
    # The next request's headers stall while the first request is still being answered:
    # uvicorn may not be reading then, so the header count starts again, and the 408 comes
    # one header timeout after the first answer, not in the middle of it.
    released = asyncio.Event()

    async def slow_app(scope: object, receive: Callable[..., object], send: Callable[..., object]) -> None:
        await released.wait()
        await ok_app(scope, receive, send)

    async def scenario() -> tuple[bytes, bytes]:
        config = uvicorn.Config(slow_app, lifespan="off", log_config=None)
        config.load()
        guarded = protocol.http_protocol(Settings(device="cpu", header_timeout_s=0.2))
        connection = guarded(config=config, server_state=ServerState(), app_state={})
        transport = Transport(("127.0.0.1", 5000))
        connection.connection_made(transport)
        connection.data_received(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t")
        await asyncio.sleep(0.5)  # two header timeouts: both while the first is answered
        during = bytes(transport.written)
        released.set()
        for _ in range(100):  # bounded: 2 s
            await asyncio.sleep(0.02)
            if b" 408 " in transport.written:
                break
        connection.connection_lost(None)
        return during, bytes(transport.written)

    during, written = asyncio.run(scenario())
    assert during == b""
    first, _, second = written.partition(b"ok")
    assert first + b"ok" == OK
    status_line, _, rest = second.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert rest.endswith(json.dumps({"detail": "request headers not complete within 0.2 s"}).encode())


def test_the_idle_timer_armed_while_the_next_headers_arrive_does_not_close_the_connection():
    # The first answer ends while the next request's headers are still arriving: uvicorn
    # arms its keep-alive timer then. When it fires, a request is in progress (its header
    # timer runs), so the connection stays open, and the request is answered.
    released = asyncio.Event()

    async def app(scope: object, receive: Callable[..., object], send: Callable[..., object]) -> None:
        if scope["path"] == "/slow":  # type: ignore[index]
            await released.wait()
        await ok_app(scope, receive, send)

    async def scenario() -> tuple[bytes, bool]:
        config = uvicorn.Config(app, lifespan="off", log_config=None)
        config.load()
        settings = Settings(device="cpu", idle_timeout_s=0.1, header_timeout_s=5.0)
        connection = protocol.http_protocol(settings)(config=config, server_state=ServerState(), app_state={})
        transport = Transport(("127.0.0.1", 5000))
        connection.connection_made(transport)
        connection.data_received(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /next HTTP/1.1\r\nHost: t")
        await asyncio.sleep(0.05)
        released.set()  # the first answer ends: the idle timer is armed
        await asyncio.sleep(0.3)  # and fires
        closed_while_arriving = transport.closing
        connection.data_received(b"\r\n\r\n")
        await asyncio.sleep(0.05)
        connection.connection_lost(None)
        return bytes(transport.written), closed_while_arriving

    written, closed_while_arriving = asyncio.run(scenario())
    assert not closed_while_arriving
    assert written == OK + OK
