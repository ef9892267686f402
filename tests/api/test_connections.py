"""Connection guards (app/serving/protocol.py) on `convewma serve`'s uvicorn server, with raw sockets."""

from __future__ import annotations

import contextlib
import io
import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import thread_server

IDLE_S = 2.0
HEADER_S = 1.0
MAX_CONNECTIONS = 20
MAX_HEADER_BYTES = 65_536
MARGIN_S = 1.5  # scheduling slack on a busy machine
GET = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    # `convewma serve`'s own uvicorn configuration, in a thread of this process: the same
    # sockets and protocol as the process tests/integration/test_server.py starts, and the
    # protocol's code runs where a mutation tool records it (tests/README.md).
    with thread_server(
        idle_timeout_s=IDLE_S,
        header_timeout_s=HEADER_S,
        max_connections=MAX_CONNECTIONS,
        max_header_bytes=MAX_HEADER_BYTES,
    ) as address:
        yield address


@contextlib.contextmanager
def connect(address: tuple[str, int], timeout_s: float = 5.0) -> Iterator[socket.socket]:
    with socket.create_connection(address, timeout=timeout_s) as sock:
        yield sock


def read_response(reader: io.BufferedReader) -> tuple[int, dict[str, str], bytes]:
    """One response (status, lower-case headers, body), framed by content-length; ``reader``
    is the socket's ``makefile("rb")``, made once (it buffers what follows)."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def assert_closed_json(response: tuple[int, dict[str, str], bytes], status: int, sock: socket.socket) -> str:
    """A guard's answer: JSON detail, connection: close, then end of stream."""
    code, headers, body = response
    assert code == status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert sock.recv(1) == b""  # the server closed (its write side at least)
    detail: str = json.loads(body)["detail"]
    return detail


def wait_closed(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock``; fails on any data."""
    started = time.monotonic()
    assert sock.recv(1) == b""
    return time.monotonic() - started


@pytest.mark.slow
def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(address):
    with connect(address, timeout_s=IDLE_S + MARGIN_S) as sock:
        assert IDLE_S - 0.2 <= wait_closed(sock) < IDLE_S + MARGIN_S


@pytest.mark.slow
def test_bytes_that_begin_no_request_do_not_keep_a_connection_open(address):
    with connect(address) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # the server may close between two sends
            while time.monotonic() - started < IDLE_S + MARGIN_S:
                sock.sendall(b"\r\n")  # skipped by the parser: no request begins
                if select.select([sock], [], [], 0.3)[0]:
                    break
        assert sock.recv(1) == b""
        assert time.monotonic() - started < IDLE_S + MARGIN_S


@pytest.mark.slow
def test_keep_alive_serves_several_requests_then_closes_when_idle(address):
    with connect(address) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(GET)
            status, headers, body = read_response(reader)
            assert (status, json.loads(body)) == (200, {"status": "ok"})
            assert "connection" not in headers  # kept open
            time.sleep(IDLE_S / 4)  # well within the idle timeout
        assert wait_closed(sock) < IDLE_S + MARGIN_S


def test_pipelined_requests_are_all_answered_in_order(address):
    with connect(address) as sock:
        sock.sendall(GET + b"GET /alphas HTTP/1.1\r\nHost: test\r\n\r\n" + GET)
        reader = sock.makefile("rb")
        answers = [read_response(reader) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert "alphas" in json.loads(answers[1][2])


@pytest.mark.slow
def test_headers_sent_byte_by_byte_get_408_after_the_header_timeout(address):
    with connect(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - started < HEADER_S + MARGIN_S:
                sock.sendall(b"X-Slow: ab\r\n")  # every header completes, the request never does
                if select.select([sock], [], [], 0.1)[0]:
                    break
        detail = assert_closed_json(read_response(sock.makefile("rb")), 408, sock)
        elapsed = time.monotonic() - started
    assert detail == "request headers not complete within 1 s"
    assert HEADER_S - 0.2 <= elapsed < HEADER_S + MARGIN_S


def many_headers(total: int) -> bytes:
    return b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"a" * 980) for i in range(total // 1000))


@pytest.mark.parametrize(
    "headers",
    [many_headers(70_000), b"X-Big: " + b"a" * 70_000 + b"\r\n", many_headers(2_000_000)],
    ids=["70 KB in many headers", "70 KB in one header", "2 MB"],
)
def test_oversized_headers_get_431(address, headers):
    with connect(address) as sock:
        with contextlib.suppress(OSError):  # the server stops reading once past the limit
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n")
        detail = assert_closed_json(read_response(sock.makefile("rb")), 431, sock)
    assert detail == "request headers exceed 65536 bytes"


def test_headers_under_the_limit_are_served(address):
    with connect(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + many_headers(60_000) + b"\r\n")
        status, _, body = read_response(sock.makefile("rb"))
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_a_connection_over_the_limit_gets_503_at_once_and_service_resumes(address):
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(address)) for _ in range(MAX_CONNECTIONS)]
        with connect(address) as extra:
            started = time.monotonic()
            extra.sendall(GET)
            detail = assert_closed_json(read_response(extra.makefile("rb")), 503, extra)
            elapsed = time.monotonic() - started
        assert elapsed < 2.0
        assert detail == "server busy: too many open connections"
        # The 20 were accepted and are waiting, not refused.
        assert select.select(idle, [], [], 0)[0] == []
    # Closed on our side: the server notices at once, and new connections are served.
    deadline = time.monotonic() + 5.0
    while (status := httpx.get(f"http://{address[0]}:{address[1]}/healthz", timeout=5).status_code) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_the_503_carries_retry_after(address):
    with contextlib.ExitStack() as stack:
        for _ in range(MAX_CONNECTIONS):
            stack.enter_context(connect(address))
        with connect(address) as extra:
            _, headers, _ = read_response(extra.makefile("rb"))  # answered before any request is sent
    assert headers["retry-after"] == "1"


def test_smooth_still_answers(address):
    response = httpx.post(
        f"http://{address[0]}:{address[1]}/smooth", json={"series": [[1, 2, 3, 4]]}, timeout=10
    )
    assert response.status_code == 200
    body = response.json()
    assert len(body["smoothed"]) == 1
    assert all(len(channel) == 4 for channel in body["smoothed"][0])
