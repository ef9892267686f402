"""Reading a request on its own: the deadline's last instant, compressed bodies decoded
step by step (raw deflate told from zlib, nothing held back), and a disconnect while a
request waits (its work and the watch on the client both ended before the error)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.api.schemas import RequestError
from app.serving.budget import MemoryBudget, Reservation
from app.serving.intake import (
    BodyLimits,
    ClientDisconnectedError,
    Deadline,
    Inflater,
    ServerBusyError,
    read_body,
    until_disconnected,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_the_deadline_has_passed_when_nothing_is_left(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("app.serving.intake.time.monotonic", lambda: now[0])
    deadline = Deadline(2.0, started=99.0)
    assert deadline.check() == 1.0
    now[0] = 101.0  # exactly at the deadline: no time is left
    with pytest.raises(TimeoutError, match=r"^request deadline passed$"):
        deadline.check()


def raw_deflate(data: bytes, level: int = 6) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def inflate(coding: str, body: bytes, chunk: int) -> bytes:
    inflater = Inflater(coding)
    out = b"".join(p for i in range(0, len(body), chunk) for p in inflater.pieces(body[i : i + chunk]))
    inflater.finish()
    return out


# A body whose raw deflate begins with two bytes that are a multiple of 31, as a zlib
# header's are, but not with the zlib method (8) in its low nibble.
LOOKALIKE = (
    b'{"series": [[48,26,12,62,3,49,55,77,97,98,0,89,57,34,92,29,75,13,40,3,2,3,83,69,1,48,87,27,54,'
    b"92,3,67,28,97,56,63,70,29,44,29,86,28]]}"
)
# Raw deflate, by hand: a stored block whose first byte has the low nibble 8 (its unused
# bits set), with "hello", then an empty final stored block. Not a multiple of 31.
STORED = bytes([0x08, 5, 0, 0xFA, 0xFF]) + b"hello" + bytes([0x01, 0, 0, 0xFF, 0xFF])


@pytest.mark.parametrize(
    ("coding", "body", "expected"),
    [
        ("deflate", zlib.compress(b'{"series": [[1]]}'), b'{"series": [[1]]}'),
        ("deflate", raw_deflate(LOOKALIKE, level=1), LOOKALIKE),
        ("deflate", STORED, b"hello"),
        ("deflate", raw_deflate(b""), b""),  # two bytes: enough to tell zlib from raw
        ("deflate", zlib.compress(b""), b""),
        ("gzip", zlib.compress(b"abc" * 50, wbits=31), b"abc" * 50),
    ],
    ids=["zlib", "raw-lookalike", "raw-stored-nibble-8", "raw-empty", "zlib-empty", "gzip"],
)
@pytest.mark.parametrize("chunk", [1, 2, 1 << 20])
def test_deflate_bodies_are_zlib_or_raw_by_their_header(coding, body, expected, chunk):
    assert inflate(coding, body, chunk) == expected


def test_the_raw_bodies_look_like_zlib_in_one_way_only():
    # What makes them hard cases: each passes one of the two checks of a zlib header.
    first, second = raw_deflate(LOOKALIKE, level=1)[:2]
    assert ((first << 8 | second) % 31, first & 0x0F) == (0, 13)
    assert ((STORED[0] << 8 | STORED[1]) % 31, STORED[0] & 0x0F) == (7, 8)


@pytest.mark.parametrize("step", [16, 100, 256])
def test_each_piece_of_a_body_yields_all_the_output_it_determines(step):
    # Long runs: one compressed byte can stand for many steps of output. However it is
    # cut, the bytes decoded so far are all that zlib itself gives for the same prefix.
    data = b"a" * 5000 + bytes(range(256)) * 4 + b"b" * 3000
    body = zlib.compress(data, wbits=31)
    inflater, whole = Inflater("gzip", step), zlib.decompressobj(31)
    got = expected = b""
    for i in range(len(body)):
        pieces = list(inflater.pieces(body[i : i + 1]))
        assert all(len(piece) <= step for piece in pieces)
        got += b"".join(pieces)
        expected += whole.decompress(body[i : i + 1])
        assert got == expected, f"after {i + 1} of {len(body)} bytes"
    inflater.finish()
    assert got == data


CLEANUP_S = 0.02  # a cancelled call's own clean-up, over several turns of the loop


class Client:
    """An ASGI ``receive`` that answers a disconnect after ``leave_after`` seconds (never
    if None), and records when its waiting call has ended, clean-up included."""

    def __init__(self, leave_after: float | None) -> None:
        self.leave_after = leave_after
        self.released = False

    async def receive(self) -> dict[str, Any]:
        try:
            if self.leave_after is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.leave_after or 0.0)
            return {"type": "http.disconnect"}
        finally:
            await asyncio.sleep(CLEANUP_S)
            self.released = True


class Work:
    """The request's work: 42 after ``seconds``; cancelled, it first waits for what it
    started (as a codec call waits for its thread) and records that it has ended."""

    def __init__(self) -> None:
        self.ended = False

    async def run(self, seconds: float) -> int:
        try:
            await asyncio.sleep(seconds)
            return 42
        finally:
            await asyncio.sleep(CLEANUP_S)
            self.ended = True


async def test_work_that_finishes_first_returns_and_stops_watching_the_client():
    client, work = Client(None), Work()
    assert await asyncio.wait_for(until_disconnected(client.receive, work.run(0.01)), 10) == 42
    assert client.released  # no read left pending on the connection


async def test_a_client_that_leaves_cancels_the_work_before_the_error():
    client, work = Client(0.01), Work()
    with pytest.raises(
        ClientDisconnectedError, match=r"^client disconnected while its request was in progress$"
    ):
        await asyncio.wait_for(until_disconnected(client.receive, work.run(30.0)), 10)
    assert work.ended  # its queue share and budget are given back before the 499


def receiver(
    chunks: list[bytes], held: list[int], reservation: Reservation
) -> Callable[[], Awaitable[dict[str, object]]]:
    """An ASGI ``receive`` sending ``chunks`` as one body; records what the reservation held
    each time the next piece was asked for."""
    pending = list(chunks)

    async def receive() -> dict[str, object]:
        held.append(reservation.held)
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return receive


async def refusal(
    chunks: list[bytes],
    declared: int | None,
    max_bytes: int,
    reservation: Reservation,
    coding: str | None = None,
) -> tuple[int, str]:
    """Status and detail of the ``RequestError`` that reading ``chunks`` as one body raises."""
    receive, limits = receiver(chunks, [], reservation), BodyLimits(max_bytes, 5.0)
    with pytest.raises(RequestError) as error:
        await read_body(receive, declared, limits, reservation, Deadline(30.0), coding)
    return error.value.status, error.value.detail


@pytest.mark.parametrize(
    ("declared", "held_before_each_piece"),
    [
        (10, [20, 20, 20]),  # twice the declared size, before anything arrives
        (None, [0, 8, 16]),  # chunked: twice what has arrived
    ],
)
async def test_a_body_is_reserved_twice_while_it_streams_in_then_once(declared, held_before_each_piece):
    reservation = Reservation(MemoryBudget(1000))
    held: list[int] = []
    receive = receiver([b"1234", b"5678", b"90"], held, reservation)
    body = await read_body(receive, declared, BodyLimits(10, 5.0), reservation, Deadline(30.0))
    assert body == b"1234567890"
    assert held == held_before_each_piece
    assert reservation.held == 10


@pytest.mark.parametrize(
    ("declared", "chunks", "message"),
    [
        (11, [b""], "body of 11 bytes exceeds the limit of 10 bytes"),
        (None, [b"123456", b"78901"], "body exceeds the limit of 10 bytes"),
        (10, [b"123456", b"78901"], "body exceeds the limit of 10 bytes"),  # more than declared
    ],
)
async def test_a_body_over_the_limit_is_413(declared, chunks, message):
    reservation = Reservation(MemoryBudget(1000))
    assert await refusal(chunks, declared, 10, reservation) == (413, message)


async def test_a_compressed_body_is_reserved_and_limited_by_its_decompressed_size():
    reservation = Reservation(MemoryBudget(1000))
    held: list[int] = []
    compressed = zlib.compress(b"a" * 40)
    receive = receiver([compressed[:5], compressed[5:]], held, reservation)
    body = await read_body(
        receive, len(compressed), BodyLimits(40, 5.0), reservation, Deadline(30.0), "deflate"
    )
    assert body == b"a" * 40
    # The declared (compressed) size twice, then twice the decompressed bytes so far.
    assert held == [2 * len(compressed), 2 * len(compressed)]
    assert reservation.held == 40
    assert await refusal([compressed], None, 39, reservation, "deflate") == (
        413,
        "the decompressed body exceeds the limit of 39 bytes",
    )


async def test_a_body_the_budget_cannot_hold_is_413_alone_and_503_beside_others():
    budget = MemoryBudget(100)
    reservation = Reservation(budget)
    assert await refusal([b"x"], 51, 1000, reservation) == (
        413,
        "a body of 51 bytes cannot fit in the server's memory budget for requests",
    )
    other = Reservation(budget)
    assert other.resize(1)
    with pytest.raises(ServerBusyError, match=r"^the memory budget for requests in flight is full$"):
        await read_body(
            receiver([b"x"], [], reservation), 50, BodyLimits(1000, 5.0), reservation, Deadline(30.0)
        )
    assert reservation.held == 0


@pytest.mark.parametrize(
    ("stall_s", "total_s", "reason"),
    [
        (0.05, 30.0, "the request body stalled (4 bytes received)"),
        (10.0, 0.1, "the request body was still arriving at the request deadline (4 bytes received)"),
        # Past the deadline already: not even the first piece is waited for.
        (10.0, -1.0, "the request body was still arriving at the request deadline (0 bytes received)"),
    ],
)
async def test_a_stalled_body_is_408_with_why(stall_s, total_s, reason):
    sent = [False]

    async def receive() -> dict[str, object]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": b"1234", "more_body": True}
        await asyncio.sleep(30)  # a client that sends nothing more
        raise AssertionError("the read was not bounded")

    reservation = Reservation(MemoryBudget(1000))
    deadline = Deadline(total_s)
    with pytest.raises(RequestError) as error:
        await asyncio.wait_for(read_body(receive, None, BodyLimits(100, stall_s), reservation, deadline), 5)
    assert (error.value.status, error.value.detail) == (408, reason)


async def test_a_client_gone_while_sending_is_a_disconnect():
    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    reservation = Reservation(MemoryBudget(1000))
    with pytest.raises(ClientDisconnectedError, match=r"^client disconnected while sending its body$"):
        await read_body(receive, None, BodyLimits(100, 5.0), reservation, Deadline(30.0))


@pytest.mark.parametrize(
    ("messages", "body"),
    [
        ([{"type": "http.request"}], b""),  # ASGI: no body means b"", no more_body means False
        ([{"type": "http.request", "body": b"12", "more_body": True}, {"type": "http.request"}], b"12"),
        ([{"type": "http.request", "body": b"12"}], b"12"),
    ],
    ids=["neither key", "the last without either", "no more_body"],
)
async def test_a_message_without_body_or_more_body_takes_the_asgi_defaults(messages, body):
    pending = list(messages)

    async def receive() -> dict[str, object]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    reservation = Reservation(MemoryBudget(1000))
    assert await read_body(receive, None, BodyLimits(100, 5.0), reservation, Deadline(30.0)) == body
    assert reservation.held == len(body)


async def test_the_decompressed_size_is_the_sum_of_all_steps():
    # Each step is under the limit; together they are over it.
    data = bytes(range(256)) * 4096  # 1 MiB, four steps of 256 KiB
    reservation = Reservation(MemoryBudget(10 << 20))
    assert await refusal([zlib.compress(data)], None, 600_000, reservation, "deflate") == (
        413,
        "the decompressed body exceeds the limit of 600000 bytes",
    )


@pytest.mark.parametrize(
    ("coding", "body", "size"),
    [(None, b"x" * 60, 60), ("deflate", zlib.compress(b"x" * 60), 60)],
    ids=["chunked", "compressed"],
)
async def test_a_body_without_a_length_that_outgrows_the_budget_is_413_with_its_size(coding, body, size):
    reservation = Reservation(MemoryBudget(100))
    assert await refusal([body], None, 1000, reservation, coding) == (
        413,
        f"a body of {size} bytes cannot fit in the server's memory budget for requests",
    )
