"""``app.api.oip.tensors``: an infer body's JSON header and binary tensors, taken apart
without the app. Each refusal is checked for its status and its whole message; each
accepted tensor for its values, datatype and whether it is a view of the body."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from app.api.oip.request import INPUTS
from app.api.oip.tensors import InferRequest, RequestedOutput, parse_request
from app.api.schemas import RequestError


def tensor(name: str = "INPUT", shape: list[Any] | None = None, datatype: str = "FP32", **fields: Any) -> Any:
    return {"name": name, "shape": [1, 2] if shape is None else shape, "datatype": datatype, **fields}


ONE = tensor(data=[1.0, 2.0])


def parse(document: Any) -> InferRequest:
    return parse_request(json.dumps(document).encode(), None, INPUTS)


def refusal(body: Any) -> tuple[int, str]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as caught:
        parse_request(raw, None, INPUTS)
    return caught.value.status, caught.value.detail


REFUSED: list[tuple[Any, str]] = [
    ([], "the inference header must be a JSON object, got list"),
    ({"id": 5, "inputs": [ONE]}, "'id' must be a string, got 5"),
    ({"inputs": {}}, "'inputs' must be a non-empty list of tensors"),
    ({"inputs": [3]}, "inputs[0] must be an object, got 3"),
    ({"inputs": [ONE, {"shape": [1]}]}, "inputs[1] needs a 'name' string"),
    (
        {"inputs": [{**ONE, "extra": 1}]},
        "unknown field(s) ['extra'] in input INPUT; expected name, shape, datatype, parameters, data",
    ),
    (
        {"inputs": [tensor(shape="1,2", data=[1.0, 2.0])]},
        "input INPUT: 'shape' must be a list of non-negative integers, got '1,2'",
    ),
    (
        {"inputs": [tensor(shape=[1, True], data=[1.0])]},
        "input INPUT: 'shape' must be a list of non-negative integers, got [1, True]",
    ),
    (
        {"inputs": [tensor(shape=[1, 2.0], data=[1.0, 2.0])]},
        "input INPUT: 'shape' must be a list of non-negative integers, got [1, 2.0]",
    ),
    ({"inputs": [{**ONE, "parameters": 3}]}, "the parameters of input INPUT must be an object, got 3"),
    (
        {"inputs": [{**ONE, "parameters": {"x": [1]}}]},
        "parameter 'x' of input INPUT must be a string, number or boolean, got [1]",
    ),
    (
        {"inputs": [{**ONE, "parameters": {"x": None}}]},
        "parameter 'x' of input INPUT must be a string, number or boolean, got None",
    ),
    (
        {"inputs": [{**ONE, "parameters": {"shared_memory_region": "r"}}]},
        "input INPUT: unknown parameter(s) ['shared_memory_region']; expected binary_data_size",
    ),
    (
        {"inputs": [tensor(parameters={"binary_data_size": 8.0})]},
        "input INPUT: binary_data_size is 8.0 bytes, but shape [1, 2] of FP32 takes 8",
    ),
    (
        {"inputs": [tensor(parameters={"binary_data_size": True})]},
        "input INPUT: binary_data_size is True bytes, but shape [1, 2] of FP32 takes 8",
    ),
    ({"inputs": [tensor(data=3)]}, "input INPUT: 'data' must be a list, got 3"),
    ({"inputs": [tensor(data="12")]}, "input INPUT: 'data' must be a list, got '12'"),
    (
        {"inputs": [tensor(data=[[1.0], [2.0, 3.0]])]},
        "input INPUT: 'data' holds 3 values, but shape [1, 2] takes 2",
    ),
    (
        {"inputs": [ONE, tensor("LENGTHS", [1], "INT64", data=[1.5])]},
        "input LENGTHS: data[0] = 1.5; expected integers",
    ),
    (
        {"inputs": [ONE, tensor("LENGTHS", [1], "INT64", data=[None])]},
        "input LENGTHS: data[0] = None; expected integers",
    ),
    (
        {"inputs": [ONE, tensor("LENGTHS", [1], "INT32", data=[2**31])]},
        "input LENGTHS: a value is out of the range of INT32",
    ),
    (
        {"inputs": [ONE, tensor("LENGTHS", [1], "INT64", data=[2**63])]},
        "input LENGTHS: a value is out of the range of INT64",
    ),
    (
        {"inputs": [tensor(data=[1.0, 10**400])]},
        "input INPUT: a value is out of the range of FP32",
    ),
    ({"inputs": [ONE], "parameters": "x"}, "the parameters of the request must be an object, got 'x'"),
    ({"inputs": [ONE], "outputs": 3}, "'outputs' must be a list of {'name': ...} objects, got 3"),
    ({"inputs": [ONE], "outputs": ["SMOOTHED"]}, "outputs[0] must be an object with a 'name' string"),
    ({"inputs": [ONE], "outputs": [{}, {"name": 1}]}, "outputs[0] must be an object with a 'name' string"),
    (
        {"inputs": [ONE], "outputs": [{"name": "ALPHAS"}, {"name": 1}]},
        "outputs[1] must be an object with a 'name' string",
    ),
    (
        {"inputs": [ONE], "outputs": [{"name": "ALPHAS", "shape": [3]}]},
        "unknown field(s) ['shape'] in outputs[0]; expected name, parameters",
    ),
    (
        {"inputs": [ONE], "outputs": [{"name": "ALPHAS", "parameters": []}]},
        "the parameters of output ALPHAS must be an object, got []",
    ),
    (
        {"inputs": [ONE], "outputs": [{"name": "ALPHAS", "parameters": {"binary_data": 1}}]},
        "output ALPHAS: binary_data must be true or false",
    ),
]


@pytest.mark.parametrize(("document", "message"), REFUSED)
def test_a_malformed_header_is_refused_with_400_and_its_exact_reason(document, message):
    assert refusal(document) == (400, message)


def stdlib_reason(body: bytes) -> str:
    """Python's own parser's reason for refusing ``body`` (the fallback after orjson)."""
    try:
        json.loads(body)
    except (ValueError, RecursionError) as error:
        return str(error)
    raise AssertionError("the body parses")


def test_a_header_that_is_not_json_gives_the_parser_s_reason():
    body = b'{"inputs": ['
    reason = stdlib_reason(body)
    assert reason == "Expecting value: line 1 column 13 (char 12)"
    assert refusal(body) == (400, f"the inference header is not JSON: {reason}")


def test_nan_and_infinity_as_python_s_json_writes_them_are_read():
    body = (
        b'{"inputs": [{"name": "INPUT", "shape": [1, 3], "datatype": "FP64", "data": [NaN, 1.5, Infinity]}]}'
    )
    values = parse_request(body, None, INPUTS).inputs["INPUT"]
    assert values.dtype == np.dtype("<f8")
    assert np.isnan(values[0, 0])
    assert values[0, 1:].tolist() == [1.5, math.inf]


@pytest.mark.parametrize(
    ("data", "shape"),
    [([1.0, None, 3, 4.5], [2, 2]), ([[1.0, None], [3, 4.5]], [2, 2]), ([[1.0], [None, [3, [4.5]]]], [2, 2])],
    ids=["flat", "nested as the shape", "nested any way"],
)
def test_json_data_is_read_row_major_with_null_as_nan(data, shape):
    values = parse({"inputs": [tensor(shape=shape, data=data)]}).inputs["INPUT"]
    assert values.dtype == np.dtype("<f4")
    assert values.shape == (2, 2)
    np.testing.assert_array_equal(values, np.array([[1.0, np.nan], [3.0, 4.5]], np.float32))


def nested_body(depth: int) -> bytes:
    data = b"[" * depth + b"7.0" + b"]" * depth
    return b'{"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": ' + data + b"}]}"


def test_data_nested_as_deep_as_the_parser_reads_is_flattened_without_recursion():
    # 1000 levels: a recursive flatten would pass Python's recursion limit under pytest's frames.
    assert parse_request(nested_body(1000), None, INPUTS).inputs["INPUT"].tolist() == [[7.0]]


def test_data_nested_deeper_than_the_parsers_read_is_not_json_with_the_reason_cut_to_80_characters():
    body = nested_body(100_000)
    reason = stdlib_reason(body)
    assert len(reason) > 80  # "maximum recursion depth exceeded while decoding ..."
    assert refusal(body) == (400, f"the inference header is not JSON: {reason[:77]}...")


@pytest.mark.parametrize(("extra", "follow"), [(-1, 7), (1, 9)])
def test_binary_bytes_must_add_up_to_what_follows_the_header(extra, follow):
    document = {"inputs": [tensor(parameters={"binary_data_size": 8})]}
    head = json.dumps(document).encode()
    body = head + bytes(8 + extra)
    with pytest.raises(RequestError) as caught:
        parse_request(body, len(head), INPUTS)
    assert (caught.value.status, caught.value.detail) == (
        400,
        f"the inputs' binary_data_size add up to 8 bytes, but {follow} bytes follow the inference "
        "header (Inference-Header-Content-Length)",
    )


@pytest.mark.parametrize("datatype", ["INT32", "INT64"])
def test_integer_data_keeps_its_datatype(datatype):
    lengths = parse({"inputs": [ONE, tensor("LENGTHS", [1], datatype, data=[2])]}).inputs["LENGTHS"]
    assert lengths.dtype == {"INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}[datatype]
    assert lengths.tolist() == [2]


def test_a_value_past_fp32_s_range_becomes_an_infinity_for_the_request_to_refuse_with_its_position():
    values = parse({"inputs": [tensor(data=[1.0, 1e39])]}).inputs["INPUT"]
    assert values.tolist() == [[1.0, math.inf]]


def test_the_id_parameters_and_outputs_are_kept():
    request = parse(
        {
            "id": "r-1",
            "inputs": [ONE],
            "parameters": {"gaps": "skip", "stride": 2, "binary_data_output": True},
            "outputs": [{"name": "SMOOTHED", "parameters": {"binary_data": False}}, {"name": "ALPHAS"}],
        }
    )
    assert request.id == "r-1"
    assert request.parameters == {"gaps": "skip", "stride": 2, "binary_data_output": True}
    assert request.outputs == [RequestedOutput("SMOOTHED", False), RequestedOutput("ALPHAS", None)]
    assert request.datatypes == {"INPUT": "FP32"}


def test_without_outputs_or_parameters_every_output_is_asked_for():
    request = parse({"inputs": [ONE]})
    assert request.id is None
    assert request.parameters == {}
    assert request.outputs is None


def binary_body(header_pad: int) -> tuple[bytes, int, np.ndarray]:
    values = np.arange(6, dtype="<f4").reshape(2, 3)
    lengths = np.array([3, 1], "<i8")
    document = {
        "inputs": [
            tensor(shape=[2, 3], parameters={"binary_data_size": values.nbytes}),
            tensor("LENGTHS", [2], "INT64", parameters={"binary_data_size": lengths.nbytes}),
        ]
    }
    head = json.dumps(document).encode() + b" " * header_pad
    return head + values.tobytes() + lengths.tobytes(), len(head), values


@pytest.mark.parametrize("pad", range(8))
def test_binary_tensors_follow_the_header_in_input_order_as_views_where_aligned(pad):
    body, length, values = binary_body(pad)
    request = parse_request(body, length, INPUTS)
    np.testing.assert_array_equal(request.inputs["INPUT"], values)
    assert request.inputs["LENGTHS"].tolist() == [3, 1]
    for name in ("INPUT", "LENGTHS"):
        tensor_ = request.inputs[name]
        assert tensor_.flags.aligned
        # A view of the body where the header leaves it aligned, else one copy.
        view = np.shares_memory(tensor_, np.frombuffer(body, np.uint8))
        assert view == (length % tensor_.dtype.itemsize == 0 if name == "INPUT" else (length + 24) % 8 == 0)


def test_binary_and_json_inputs_mix_in_one_request():
    values = np.array([[1.5, -2.0]], "<f8")
    document = {
        "inputs": [
            tensor(shape=[1, 2], datatype="FP64", parameters={"binary_data_size": 16}),
            tensor("LENGTHS", [1], "INT32", data=[1]),
        ]
    }
    head = json.dumps(document).encode()
    request = parse_request(head + values.tobytes(), len(head), INPUTS)
    np.testing.assert_array_equal(request.inputs["INPUT"], values)
    assert request.inputs["LENGTHS"].tolist() == [1]
    assert request.datatypes == {"INPUT": "FP64", "LENGTHS": "INT32"}


def test_a_json_integer_in_a_float_tensor_is_read_as_the_nearest_double_first_as_on_smooth():
    # Past 2**53 the two roundings differ from one: 2**60 + 2**36 + 1 is a double's tie for
    # float32. /smooth's parser and NumPy's own float32(int) read it through a double.
    big = 2**60 + 2**36 + 1
    values = parse({"inputs": [tensor(data=[big, 1])]}).inputs["INPUT"]
    assert values[0, 0] == np.float32(float(big)) == np.float32(2.0**60)
    assert values[0, 1] == 1.0
