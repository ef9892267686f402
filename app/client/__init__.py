"""A Python client for convewma servers: pandas, NumPy or lists of arrays in, the same kind out.

    from app.client import ConvEWMAClient
    with ConvEWMAClient("http://127.0.0.1:8000") as client:
        smoothed = client.smooth(frame)          # a DataFrame: same index, same columns
        stream = client.stream()
        part = stream.push(next_rows)            # equal to smoothing everything pushed so far

It speaks the Open Inference Protocol with binary tensors (JSON with ``binary=False``),
splits what exceeds the server's limits into several requests and joins the answers in
order, retries 503 after its ``Retry-After`` within a bounded budget, and raises
``ConvEWMAError`` with the server's reason.
"""

from app.client.aio import AsyncConvEWMAClient, AsyncStream
from app.client.core import ConvEWMAError, Options
from app.client.sync import ConvEWMAClient, Stream

__all__ = ["AsyncConvEWMAClient", "AsyncStream", "ConvEWMAClient", "ConvEWMAError", "Options", "Stream"]
