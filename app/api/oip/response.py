"""An infer response: a JSON header, then the binary outputs written in place.

Outputs (ragged rows right-padded with NaN, their lengths beside them):
``SMOOTHED`` ``[N, C, T']`` in the datatype of ``INPUT`` (pairing ``each``: ``C = 1``),
``SMOOTHED_LENGTHS`` INT64 ``[N]`` (on request), ``ALPHAS`` FP64 ``[C]`` (pairing ``each``:
one per series), and with a history ``HISTORY`` ``[N, H']``, ``HISTORY_LENGTHS`` INT64
``[N]`` and, with times, ``HISTORY_TIMES`` FP64 ``[N, H']``: what the next request sends.

A binary output is written straight into the one buffer that is sent (the header, then
each output's bytes in order): one copy from the batch's outputs, no Python object per
value. An output in JSON is ``data``, flat in row-major order, NaN as ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from app.api.oip.request import InferPlan
from app.api.oip.tensors import DATATYPES
from app.serving.results import SmoothResult

MODEL_NAME = "convewma"
JSON_BYTES_PER_VALUE = 48  # an output value as JSON text (at most about 25), and the header copied once
# The header is padded with spaces (JSON allows them) to a multiple of this, so that every
# binary output starts aligned: NumPy copies into unaligned memory several times slower.
ALIGN = 64
Fill = Callable[[np.ndarray], None]


@dataclass(frozen=True)
class Encoded:
    body: bytes | memoryview
    header_length: int | None  # the JSON header's bytes, when binary outputs follow it


def response_bound(plan: InferPlan) -> int:
    """The most bytes the response to ``plan`` can take, before it is computed."""
    job = plan.job
    width = 1 if job.pairing == "each" else len(job.channels)
    itemsize = 8 if job.dtype == "float64" else 4
    longest = max(len(row) for row in job.series)
    total = 0
    for name, binary in plan.outputs:
        size = itemsize if binary else JSON_BYTES_PER_VALUE
        if name == "SMOOTHED":
            # With a history, a row may answer one output more than its own length gives.
            total += len(job.series) * width * (-(-longest // job.stride) + 1) * size
        elif name.startswith("HISTORY") and job.history is not None:
            deepest = longest + max(len(row) for row in job.history)
            total += len(job.series) * deepest * max(size, 8)
        else:
            total += max(len(job.series), width) * max(size, 8)
    return total


def encode(plan: InferPlan, result: SmoothResult) -> Encoded:
    tensors = _tensors(result, plan.job.dtype)
    entries: list[dict[str, Any]] = []
    binary: list[tuple[str, tuple[int, ...], Fill, int]] = []
    for name, as_binary in plan.outputs:
        datatype, shape, fill = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape)}
        if as_binary:
            size = math.prod(shape) * DATATYPES[datatype].itemsize
            entry["parameters"] = {"binary_data_size": size}
            binary.append((datatype, shape, fill, size))
        else:
            data = np.empty(shape, DATATYPES[datatype])
            fill(data)
            entry["data"] = data.ravel()
        entries.append(entry)
    document: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": result.model_version}
    if plan.id is not None:
        document["id"] = plan.id
    document["parameters"] = {"channels": ",".join(result.channels)}
    document["outputs"] = entries
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return Encoded(header, None)
    header += b" " * (-len(header) % ALIGN)
    buffer = bytearray(len(header) + sum(size for *_, size in binary))
    buffer[: len(header)] = header
    offset = len(header)
    for datatype, shape, fill, size in binary:
        fill(np.frombuffer(buffer, DATATYPES[datatype], math.prod(shape), offset).reshape(shape))
        offset += size
    return Encoded(memoryview(buffer), len(header))


def _tensors(result: SmoothResult, dtype: str) -> dict[str, tuple[str, tuple[int, ...], Fill]]:
    values = "FP64" if dtype == "float64" else "FP32"
    smoothed = result.smoothed
    width = smoothed[0].shape[0]
    outputs = [block.shape[-1] for block in smoothed]
    tensors: dict[str, tuple[str, tuple[int, ...], Fill]] = {
        "SMOOTHED": (values, (len(smoothed), width, max(outputs)), _padded(smoothed)),
        "SMOOTHED_LENGTHS": ("INT64", (len(smoothed),), _copy(np.array(outputs))),
        "ALPHAS": ("FP64", (len(result.alphas),), _copy(np.array(result.alphas))),
    }
    if result.history is not None:
        depths = [len(row) for row in result.history]
        shape = (len(depths), max(depths))
        tensors["HISTORY"] = (values, shape, _padded(result.history))
        tensors["HISTORY_LENGTHS"] = ("INT64", (len(depths),), _copy(np.array(depths)))
        if result.history_times is not None:
            tensors["HISTORY_TIMES"] = ("FP64", shape, _padded(result.history_times))
    return tensors


def _padded(rows: list[np.ndarray]) -> Fill:
    """Writes each row (1-D, or 2-D with the time last) right-padded with NaN."""

    def fill(out: np.ndarray) -> None:
        for index, row in enumerate(rows):
            length = row.shape[-1]
            out[index, ..., :length] = row
            out[index, ..., length:] = np.nan

    return fill


def _copy(array: np.ndarray) -> Fill:
    def fill(out: np.ndarray) -> None:
        out[...] = array

    return fill
