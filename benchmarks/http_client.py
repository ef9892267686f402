"""The benchmarks' HTTP/1.1 response reader over raw asyncio streams, shared by the load
clients (``bench_service.py``, ``bench_threads.py``, ``bench_overload.py``). No import of
``app`` or torch: the overload client's processes stay light.
"""

from __future__ import annotations

import asyncio


async def read_response(reader: asyncio.StreamReader, keep: bool = False) -> tuple[int, bool, bytes]:
    """Status, whether the server closes the connection, and the body if ``keep`` (else
    read and dropped). Handles content-length, chunked, and read-until-close bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length: int | None = None
    close = head.startswith(b"HTTP/1.0")
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value == b"close"
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
    kept: list[bytes] = []

    async def take(count: int) -> None:
        while count > 0:
            data = await reader.read(min(count, 1 << 20))
            if not data:
                raise asyncio.IncompleteReadError(b"", count)
            count -= len(data)
            if keep:
                kept.append(data)

    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await take(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
    elif length is not None:
        await take(length)
    else:
        close = True
        while data := await reader.read(1 << 20):
            if keep:
                kept.append(data)
    return status, close, b"".join(kept)
