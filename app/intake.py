"""Reading a request under one deadline: body limits, stalls, disconnects.

``CONVEWMA_REQUEST_TIMEOUT_S`` runs from the moment a request reaches the app to its
last response byte. Reading the body, parsing, queueing, computing and encoding each
wait at most for what is left of it; a body that stalls for ``body_timeout_s`` or is
still arriving at the deadline is answered 408; a client that goes away is noticed
while its request waits, so that its queued work is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from app.budget import Reservation
from app.metrics import Receive
from app.schemas import RequestError

T = TypeVar("T")


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


async def read_body(
    receive: Receive, declared: int | None, limits: BodyLimits, reservation: Reservation, deadline: Deadline
) -> bytes:
    """The whole body, with memory reserved for it before each piece is kept.

    Twice the body is reserved while it streams in: its pieces and, for a moment, the
    joined copy.
    """
    if declared is not None and declared > limits.max_bytes:
        raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limits.max_bytes} bytes")
    if declared is not None:
        _reserve(reservation, 2 * declared, declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        wait = min(limits.stall_s, deadline.remaining())
        try:
            message = await asyncio.wait_for(receive(), max(wait, 0.0))
        except TimeoutError:
            reason = "stalled" if wait >= limits.stall_s else "was still arriving at the request deadline"
            raise RequestError(408, f"the request body {reason} ({size} bytes received)") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("client disconnected while sending its body")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limits.max_bytes:
            raise RequestError(413, f"body exceeds the limit of {limits.max_bytes} bytes")
        if declared is None:
            _reserve(reservation, 2 * size, size)
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks
    reservation.resize(len(body))
    return body


def _reserve(reservation: Reservation, amount: int, body_bytes: int) -> None:
    if not reservation.fits_alone(amount):
        raise RequestError(
            413, f"a body of {body_bytes} bytes cannot fit in the server's memory budget for requests"
        )
    if not reservation.resize(amount):
        raise ServerBusyError("the memory budget for requests in flight is full")


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
