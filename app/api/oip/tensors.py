"""An Open Inference Protocol infer request: its JSON header, then its binary tensors.

Triton's binary tensor extension: the first ``Inference-Header-Content-Length`` bytes of the
body are the JSON header; each input whose parameters hold ``binary_data_size`` takes that
many of the bytes after it, in input order, as a little-endian row-major tensor. Such a
tensor is a NumPy view of the body (a copy if the header leaves it unaligned): no Python
object per value. An input may
carry its values in the header's ``data`` instead (flat or nested, row-major).

Everything in the header is checked before any tensor is read, and every error names the
tensor and field (400; the service maps it to the protocol's ``{"error": ...}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from app.api.schemas import RequestError, excerpt

# Little-endian, as the extension specifies, whatever this machine's byte order.
DATATYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
REQUEST_FIELDS = ("id", "parameters", "inputs", "outputs")
INPUT_FIELDS = ("name", "shape", "datatype", "parameters", "data")
OUTPUT_FIELDS = ("name", "parameters")
Scalar = str | int | float | bool


def show(value: object) -> str:
    """A short quote of client input for an error message (strings in quotes)."""
    return excerpt(repr(value))


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: the request's binary_data_output decides


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]  # by name, each in its declared shape and datatype
    datatypes: dict[str, str]
    parameters: dict[str, Scalar]
    outputs: list[RequestedOutput] | None  # None: every output


def load_header(header: memoryview) -> Any:
    """The JSON header; Python's ``json`` module also writes NaN and Infinity, so they parse too."""
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(bytes(header))
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"the inference header is not JSON: {excerpt(str(error), 80)}") from None


def parse_request(body: bytes, length: int | None, accepted: Mapping[str, tuple[str, ...]]) -> InferRequest:
    """The request in ``body`` (its first ``length`` bytes the header, or all of it), with
    each input's datatype one of ``accepted[name]``."""
    length = len(body) if length is None else length
    document = load_header(memoryview(body)[:length])
    if not isinstance(document, dict):
        raise RequestError(400, f"the inference header must be a JSON object, got {type(document).__name__}")
    _known(document, REQUEST_FIELDS, "the inference request")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, f"'id' must be a string, got {show(request_id)}")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError(400, "'inputs' must be a non-empty list of tensors")
    declared = [_declaration(raw, position, accepted) for position, raw in enumerate(raw_inputs)]
    names = [name for name, *_ in declared]
    for name in names:
        if names.count(name) > 1:
            raise RequestError(400, f"input {name} is given {names.count(name)} times")
    binary = sum(size for *_, size in declared if size is not None)
    if binary != len(body) - length:
        raise RequestError(
            400,
            f"the inputs' binary_data_size add up to {binary} bytes, but {len(body) - length} bytes "
            "follow the inference header (Inference-Header-Content-Length)",
        )
    inputs: dict[str, np.ndarray] = {}
    offset = length
    for (name, datatype, shape, raw, size), tensor in zip(declared, raw_inputs, strict=True):
        if size is None:
            inputs[name] = _from_json(tensor.get("data"), name, datatype, shape)
        else:
            count = math.prod(shape)
            tensor = np.frombuffer(body, DATATYPES[datatype], count, offset).reshape(shape)
            # Where the header's length leaves a tensor unaligned, one copy now: NumPy's
            # reductions and copies over unaligned memory run several times slower.
            inputs[name] = tensor if tensor.flags.aligned else tensor.copy()
            offset += size
        del raw
    return InferRequest(
        id=request_id,
        inputs=inputs,
        datatypes={name: datatype for name, datatype, *_ in declared},
        parameters=parameters_of(document.get("parameters"), "the request"),
        outputs=_outputs(document.get("outputs")),
    )


def parameters_of(raw: Any, owner: str) -> dict[str, Scalar]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RequestError(400, f"the parameters of {owner} must be an object, got {show(raw)}")
    for key, value in raw.items():
        if not isinstance(value, (str, int, float, bool)):
            raise RequestError(
                400, f"parameter {key!r} of {owner} must be a string, number or boolean, got {show(value)}"
            )
    return raw


def _known(document: dict[str, Any], fields: tuple[str, ...], owner: str) -> None:
    unknown = sorted(set(document) - set(fields))
    if unknown:
        raise RequestError(400, f"unknown field(s) {show(unknown)} in {owner}; expected {', '.join(fields)}")


def _declaration(
    raw: Any, position: int, accepted: Mapping[str, tuple[str, ...]]
) -> tuple[str, str, list[int], Any, int | None]:
    """Name, datatype, shape and binary size of an input, all checked against its declaration."""
    if not isinstance(raw, dict):
        raise RequestError(400, f"inputs[{position}] must be an object, got {show(raw)}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise RequestError(400, f"inputs[{position}] needs a 'name' string")
    if name not in accepted:
        raise RequestError(400, f"unknown input {show(name)}; this model takes {', '.join(accepted)}")
    _known(raw, INPUT_FIELDS, f"input {name}")
    datatype = raw.get("datatype")
    if datatype not in accepted[name]:
        expected = " or ".join(accepted[name])
        raise RequestError(400, f"input {name} has datatype {show(datatype)}; expected {expected}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise RequestError(
            400, f"input {name}: 'shape' must be a list of non-negative integers, got {show(shape)}"
        )
    parameters = parameters_of(raw.get("parameters"), f"input {name}")
    unknown = sorted(set(parameters) - {"binary_data_size"})
    if unknown:
        raise RequestError(
            400, f"input {name}: unknown parameter(s) {show(unknown)}; expected binary_data_size"
        )
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise RequestError(400, f"input {name} has neither 'data' nor a binary_data_size parameter")
        return name, datatype, shape, raw, None
    if "data" in raw:
        raise RequestError(400, f"input {name} has both 'data' and a binary_data_size parameter")
    expected_size = math.prod(shape) * DATATYPES[datatype].itemsize
    if type(size) is not int or size != expected_size:
        raise RequestError(
            400,
            f"input {name}: binary_data_size is {show(size)} bytes, but shape {shape} of {datatype} "
            f"takes {expected_size}",
        )
    return name, datatype, shape, raw, size


def _from_json(data: Any, name: str, datatype: str, shape: list[int]) -> np.ndarray:
    """An input's ``data``: numbers in row-major order, flat or nested as its shape; for a
    float tensor ``null`` (and the NaN that Python's ``json`` writes) is a missing value."""
    flat = _flatten(data, name)
    count = math.prod(shape)
    if len(flat) != count:
        raise RequestError(
            400, f"input {name}: 'data' holds {len(flat)} values, but shape {shape} takes {count}"
        )
    floats = datatype.startswith("FP")
    for position, value in enumerate(flat):
        kind = type(value)
        if not (kind is int or (floats and (kind is float or value is None))):
            expected = "numbers or null" if floats else "integers"
            raise RequestError(400, f"input {name}: data[{position}] = {show(value)}; expected {expected}")
    dtype = DATATYPES[datatype]
    try:
        if not floats:
            return np.array(flat, dtype).reshape(shape)
        values = np.array([math.nan if v is None else v for v in flat], np.float64)
        with np.errstate(over="ignore"):  # past FP32's range is an infinity, refused with its position
            return values.astype(dtype).reshape(shape)
    except OverflowError:
        raise RequestError(400, f"input {name}: a value is out of the range of {datatype}") from None


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise RequestError(400, f"input {name}: 'data' must be a list, got {show(data)}")
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:  # depth first without recursion: a deeply nested list cannot overflow the stack
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise RequestError(400, f"'outputs' must be a list of {{'name': ...}} objects, got {show(raw)}")
    chosen: list[RequestedOutput] = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(400, f"outputs[{position}] must be an object with a 'name' string")
        _known(item, OUTPUT_FIELDS, f"outputs[{position}]")
        parameters = parameters_of(item.get("parameters"), f"output {item['name']}")
        unknown = sorted(set(parameters) - {"binary_data"})
        if unknown:
            raise RequestError(
                400,
                f"output {item['name']}: unsupported parameter(s) {show(unknown)}; expected binary_data",
            )
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise RequestError(400, f"output {item['name']}: binary_data must be true or false")
        chosen.append(RequestedOutput(item["name"], binary))
    return chosen
