"""Reading a request under one deadline: body limits, stalls, disconnects.

``CONVEWMA_REQUEST_TIMEOUT_S`` runs from the moment a request reaches the app to its
last response byte. Reading the body, parsing, queueing, computing and encoding each
wait at most for what is left of it; a body that stalls for ``body_timeout_s`` or is
still arriving at the deadline is answered 408; a client that goes away is noticed
while its request waits, so that its queued work is dropped.

A body sent with ``Content-Encoding: gzip`` or ``deflate`` is decompressed as it arrives,
in steps of at most ``INFLATE_STEP_BYTES``, with the size limit and the memory budget
applied to the decompressed bytes: a small compressed bomb is refused (413) after at
most one step past the limit, and a large body never holds the event loop for long.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from app.api.schemas import RequestError, excerpt
from app.serving.budget import Reservation
from app.serving.metrics import Receive

T = TypeVar("T")
INFLATE_STEP_BYTES = 256 * 1024  # decompressed bytes per step (about a millisecond at most)
INFLATE_INPUT_BYTES = 64 * 1024  # compressed bytes given to zlib at a time
GZIP_WBITS = 16 + zlib.MAX_WBITS
CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class ClientDisconnectedError(Exception):
    """The client closed its connection before the response (counted as status 499)."""


class ServerBusyError(Exception):
    """No room for this request now (503 with ``Retry-After``)."""


@dataclass(frozen=True)
class Deadline:
    total_s: float
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.total_s - (time.monotonic() - self.started)

    def check(self) -> float:
        """What is left; ``TimeoutError`` (504) if nothing is."""
        left = self.remaining()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        return left


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    stall_s: float  # longest pause between two pieces of the body


def content_coding(header: str | None) -> str | None:
    """The compression named by a ``Content-Encoding`` header: None, ``gzip`` or ``deflate``.

    One coding at most (``identity`` alone is none); anything else is a 415 naming it.
    """
    codings = [coding.strip().lower() for coding in (header or "").split(",") if coding.strip()]
    if not codings or codings == ["identity"]:
        return None
    if len(codings) == 1 and codings[0] in CODINGS:
        return CODINGS[codings[0]]
    raise RequestError(
        415, f"content-encoding must be gzip, deflate or identity, got {excerpt(header or '')}"
    )


class Inflater:
    """Decompresses a gzip or deflate body piece by piece, at most ``step`` bytes at a time."""

    def __init__(self, coding: str, step: int = INFLATE_STEP_BYTES) -> None:
        self.coding = coding
        self.step = step
        self._stream: zlib._Decompress | None = None
        self._head = b""  # deflate: the first bytes, until they tell zlib from raw deflate

    def pieces(self, data: bytes) -> Iterator[bytes]:
        """The decompressed bytes of ``data``, the next part of the body, in steps."""
        if self._stream is None:
            data = self._head + data
            if self.coding == "deflate" and len(data) < 2:
                self._head = data
                return
            self._stream = zlib.decompressobj(self._wbits(data))
        # zlib copies the input it has not used yet after each step: fed in slices, a
        # large chunk costs no more than small ones.
        for start in range(0, len(data), INFLATE_INPUT_BYTES):
            yield from self._inflate(data[start : start + INFLATE_INPUT_BYTES])

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        assert self._stream is not None
        stream = self._stream
        while True:
            if stream.eof:  # data after the end of a stream: another gzip member
                if self.coding != "gzip":
                    raise RequestError(400, "malformed deflate body: data after the end of its stream")
                stream = self._stream = zlib.decompressobj(GZIP_WBITS)
            try:
                piece = stream.decompress(data, self.step)
            except zlib.error as exc:
                raise RequestError(400, f"malformed {self.coding} body: {exc}") from None
            if piece:
                yield piece
            # At the end of a stream the input left is in unused_data (and unconsumed_tail
            # may hold a stale copy of it); before, in unconsumed_tail.
            data = stream.unused_data if stream.eof else stream.unconsumed_tail
            if not data and (stream.eof or len(piece) < self.step):
                return  # all input taken and no output left pending

    def finish(self) -> None:
        """The body has ended: a 400 unless its compressed stream ended too."""
        if self._stream is None or not self._stream.eof:
            raise RequestError(400, f"malformed {self.coding} body: it ends before its compressed stream")

    def _wbits(self, head: bytes) -> int:
        if self.coding == "gzip":
            return GZIP_WBITS
        # HTTP's deflate is the zlib format, but some clients send raw deflate: tell them
        # apart by the zlib header (method 8 and a checksum making it a multiple of 31).
        zlib_header = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


async def read_body(
    receive: Receive,
    declared: int | None,
    limits: BodyLimits,
    reservation: Reservation,
    deadline: Deadline,
    coding: str | None = None,
) -> bytes:
    """The whole body (decompressed if ``coding``), with memory reserved before each piece is kept.

    Twice the body is reserved while it streams in: its pieces and, for a moment, the
    joined copy. ``max_bytes`` bounds both the bytes sent and, for a compressed body, the
    bytes it decompresses to.
    """
    if declared is not None and declared > limits.max_bytes:
        raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limits.max_bytes} bytes")
    if declared is not None:
        _reserve(reservation, 2 * declared, declared)
    inflater = Inflater(coding) if coding else None
    chunks: list[bytes] = []
    size = 0  # bytes kept (decompressed)
    received = 0  # bytes sent
    while True:
        wait = min(limits.stall_s, deadline.remaining())
        try:
            message = await asyncio.wait_for(receive(), max(wait, 0.0))
        except TimeoutError:
            reason = "stalled" if wait >= limits.stall_s else "was still arriving at the request deadline"
            raise RequestError(408, f"the request body {reason} ({received} bytes received)") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("client disconnected while sending its body")
        chunk: bytes = message.get("body", b"")
        received += len(chunk)
        if received > limits.max_bytes:
            raise RequestError(413, f"body exceeds the limit of {limits.max_bytes} bytes")
        if inflater is None:
            size = received
            if declared is None:
                _reserve(reservation, 2 * size, size)
            if chunk:
                chunks.append(chunk)
        else:
            for piece in inflater.pieces(chunk):
                size += len(piece)
                if size > limits.max_bytes:
                    raise RequestError(
                        413, f"the decompressed body exceeds the limit of {limits.max_bytes} bytes"
                    )
                _reserve(reservation, 2 * max(size, declared or 0), size)
                chunks.append(piece)
                await asyncio.sleep(0)  # a small chunk can inflate to many steps: let others run
        if not message.get("more_body", False):
            break
    if inflater is not None:
        inflater.finish()
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks
    reservation.resize(len(body))
    return body


def reserve(reservation: Reservation, amount: int, too_big: str) -> None:
    """Hold ``amount`` bytes: 413 with ``too_big`` if it could never fit, 503 if not now."""
    if not reservation.fits_alone(amount):
        raise RequestError(413, too_big)
    if not reservation.resize(amount):
        raise ServerBusyError("the memory budget for requests in flight is full")


def _reserve(reservation: Reservation, amount: int, body_bytes: int) -> None:
    too_big = f"a body of {body_bytes} bytes cannot fit in the server's memory budget for requests"
    reserve(reservation, amount, too_big)


async def until_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """``work``'s result, or ``ClientDisconnectedError`` (and ``work`` cancelled) if the
    client goes away first. Call only once the body has been read."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(receive())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientDisconnectedError("client disconnected while its request was in progress")
    finally:
        for pending in (task, watch):
            pending.cancel()
        # The cancelled work must not outlive the request (it holds budget and queue share).
        await asyncio.gather(task, watch, return_exceptions=True)
