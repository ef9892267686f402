"""Responses: small ones built whole, large ``/smooth`` results encoded and sent in chunks.

A result's JSON is about 16 bytes per output value (float64: about 20), four times its
float32 arrays;
building it whole would make the response the largest object of a request. Past
``STREAM_VALUES`` output values it is encoded in about ``ENCODE_CHUNK_BYTES`` at a time
in the codec thread and sent as each chunk is ready (chunked transfer encoding), so a
request holds at most two chunks of text. The status is decided before the first byte
(the outputs are checked first), and the request's ticket is closed after the last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import orjson
from fastapi import Response

from app.api.jsoncodec import encode_smooth_response
from app.serving.budget import ENCODE_CHUNK_BYTES
from app.serving.intake import Deadline
from app.serving.metrics import Receive, Scope, Send
from app.serving.results import SmoothResult
from app.serving.service import SmoothingService, Ticket

logger = logging.getLogger("convewma")
JSON = "application/json"
STREAM_VALUES = 64 * 1024  # output values above which a response is streamed


def json_response(payload: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=JSON
    )


def smooth_response(
    result: SmoothResult, service: SmoothingService, ticket: Ticket, deadline: Deadline
) -> Response:
    """The response for a result; it owns ``ticket`` from here on."""
    chunks = encode_smooth_response(
        result.smoothed,
        result.channels,
        result.alphas,
        result.model_version,
        ENCODE_CHUNK_BYTES,
        result.history,
        result.history_times,
    )
    if result.values <= STREAM_VALUES:
        response = Response(b"".join(chunks), media_type=JSON)
        ticket.close()
        return response
    return ChunkedResponse(chunks, service, ticket, deadline)


class ChunkedResponse(Response):
    """Sends ``chunks``, each made in a codec thread, until done, disconnected or late."""

    def __init__(
        self, chunks: Iterator[bytes], service: SmoothingService, ticket: Ticket, deadline: Deadline
    ):
        super().__init__(media_type=JSON)
        del self.headers["content-length"]  # chunked transfer encoding
        self.chunks = chunks
        self.service = service
        self.ticket = ticket
        self.deadline = deadline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = asyncio.ensure_future(receive())  # completes only if the client goes away
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            while not watch.done():
                chunk = await self.service.codec_call(self.deadline, next, self.chunks, None)
                if chunk is None:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": chunk, "more_body": True}),
                    self.deadline.check(),
                )
            logger.info("client disconnected while its response was being sent")
        except TimeoutError:
            # Too late for a 504 once the status is sent: the connection is closed instead.
            logger.info("response abandoned: the request deadline passed while it was being sent")
        finally:
            watch.cancel()
            self.ticket.close()
