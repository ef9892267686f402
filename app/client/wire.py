"""The client's side of the Open Inference Protocol: infer bodies with binary (or JSON)
tensors, and the tensors of an answer. Written from Triton's binary tensor extension, as
any client would be; it shares no code with the server."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

DATATYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}
NAMES = {np.dtype(v): k for k, v in DATATYPES.items()}


@dataclass
class InferCall:
    """One infer request: tensors by name (row-padded 2-D, or 1-D lengths) and parameters."""

    inputs: dict[str, np.ndarray]
    parameters: dict[str, str | int | float | bool]
    outputs: list[str]
    binary: bool = True
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> tuple[bytes, dict[str, str]]:
        """The request's bytes and headers: a JSON header, then each tensor little-endian."""
        tensors: list[dict[str, Any]] = []
        blobs: list[memoryview] = []
        for name, array in self.inputs.items():
            array = np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
            entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": NAMES[array.dtype]}
            if self.binary:
                entry["parameters"] = {"binary_data_size": array.nbytes}
                blobs.append(array.reshape(-1).view(np.uint8).data)
            else:
                entry["data"] = array.ravel()  # NaN as null: a missing value
            tensors.append(entry)
        wanted = [{"name": name, "parameters": {"binary_data": self.binary}} for name in self.outputs]
        header = orjson.dumps(
            {"inputs": tensors, "outputs": wanted, "parameters": self.parameters},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        if not blobs:
            return header, {"Content-Type": "application/json"}
        # One copy of each tensor, into the body.
        return b"".join([header, *blobs]), {"Inference-Header-Content-Length": str(len(header))}


def read_answer(content: bytes, header_length: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header of an infer answer and its outputs by name (views of ``content``)."""
    end = len(content) if header_length is None else int(header_length)
    head = orjson.loads(content[:end])
    tensors: dict[str, np.ndarray] = {}
    offset = end
    for output in head["outputs"]:
        dtype, shape = np.dtype(DATATYPES[output["datatype"]]), output["shape"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            data = [math.nan if value is None else value for value in output["data"]]
            tensors[output["name"]] = np.array(data, dtype).reshape(shape)
        else:
            tensors[output["name"]] = np.frombuffer(content, dtype, math.prod(shape), offset).reshape(shape)
            offset += size
    return head, tensors


def padded(rows: list[np.ndarray], dtype: np.dtype[Any], width: int | None = None) -> np.ndarray:
    """Rows right-padded with NaN into one ``[N, width]`` tensor."""
    width = max((len(row) for row in rows), default=0) if width is None else width
    out = np.full((len(rows), width), np.nan, dtype)
    for index, row in enumerate(rows):
        out[index, : len(row)] = row
    return out
