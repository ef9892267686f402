"""``app.api.oip.response``: an infer answer's bytes from a result, read back the way the
binary tensor extension describes them (``tests/api/test_oip.read_response``, written from
the specification), and the bound on its size that the memory budget holds before the
answer exists."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from app.api.oip.request import InferPlan
from app.api.oip.response import ALIGN, MODEL_NAME, encode, response_bound
from app.api.schemas import SmoothJob
from app.serving.results import SmoothResult
from tests.api.test_oip import read_response

NAN = math.nan


def plan_for(
    outputs: list[tuple[str, bool]],
    lengths: tuple[int, ...] = (3, 1),
    channels: tuple[int, ...] = (0, 1),
    dtype: str = "float32",
    history: tuple[int, ...] | None = None,
    stride: int = 1,
    pairing: str = "bank",
    request_id: str | None = "r-1",
) -> InferPlan:
    kind = np.float64 if dtype == "float64" else np.float32
    job = SmoothJob(
        series=[np.arange(n, dtype=kind) for n in lengths],
        channels=list(channels),
        warmup=None,
        history=None if history is None else [np.ones(n, kind) for n in history],
        pairing=pairing,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        stride=stride,
    )
    return InferPlan(job, outputs, request_id, None)


def result_for(dtype: str = "float32", history: bool = False, history_times: bool = False) -> SmoothResult:
    kind = np.float64 if dtype == "float64" else np.float32
    smoothed = [
        np.array([[1.0, NAN, 3.0], [4.0, 5.0, 6.0]], kind),  # NaN: a missing output stays missing
        np.array([[7.0], [8.0]], kind),
    ]
    return SmoothResult(
        smoothed=smoothed,
        channels=["fast", "slow"],
        alphas=[0.5, 0.125],
        model_version="3",
        values=8,
        history=[np.array([1.0, 2.0], kind), np.array([3.0], kind)] if history else None,
        history_times=[np.array([10.0, 11.5]), np.array([20.0])] if history_times else None,
    )


def answer(plan: InferPlan, result: SmoothResult) -> tuple[dict[str, Any], dict[str, np.ndarray], bytes]:
    encoded = encode(plan, result)
    content = bytes(encoded.body)
    headers = (
        {}
        if encoded.header_length is None
        else {"inference-header-content-length": str(encoded.header_length)}
    )
    end = len(content) if encoded.header_length is None else encoded.header_length
    tensors = read_response(content, headers)
    return json.loads(content[:end]), tensors, content  # type: ignore[return-value]


SMOOTHED = np.array([[[1.0, NAN, 3.0], [4.0, 5.0, 6.0]], [[7.0, NAN, NAN], [8.0, NAN, NAN]]])


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_default_outputs_carry_the_padded_rows_the_alphas_and_the_model(binary, dtype):
    head, tensors, _ = answer(
        plan_for([("SMOOTHED", binary), ("ALPHAS", binary)], dtype=dtype), result_for(dtype)
    )
    assert head["model_name"] == MODEL_NAME == "convewma"
    assert head["model_version"] == "3"
    assert head["id"] == "r-1"
    assert head["parameters"] == {"channels": "fast,slow"}
    values = "FP64" if dtype == "float64" else "FP32"
    assert [(o["name"], o["datatype"], o["shape"]) for o in head["outputs"]] == [
        ("SMOOTHED", values, [2, 2, 3]),
        ("ALPHAS", "FP64", [2]),
    ]
    np.testing.assert_array_equal(tensors["SMOOTHED"], SMOOTHED.astype(tensors["SMOOTHED"].dtype))
    assert tensors["SMOOTHED"].dtype == np.dtype(values.replace("FP", "float"))
    assert tensors["ALPHAS"].tolist() == [0.5, 0.125]


def test_json_data_is_flat_row_major_with_null_for_nan():
    head, _, _ = answer(plan_for([("SMOOTHED", False)]), result_for())
    assert head["outputs"][0]["data"] == [1.0, None, 3.0, 4.0, 5.0, 6.0, 7.0, None, None, 8.0, None, None]
    assert "parameters" not in head["outputs"][0]


def test_a_json_only_answer_has_no_header_length_and_no_padding():
    encoded = encode(plan_for([("ALPHAS", False)]), result_for())
    assert encoded.header_length is None
    assert bytes(encoded.body) == json.dumps(json.loads(bytes(encoded.body)), separators=(",", ":")).encode()


def test_binary_outputs_follow_a_header_padded_with_spaces_to_the_alignment_in_the_order_asked():
    plan = plan_for([("ALPHAS", True), ("SMOOTHED_LENGTHS", False), ("SMOOTHED", True)])
    head, tensors, content = answer(plan, result_for())
    encoded = encode(plan, result_for())
    length = encoded.header_length
    assert length is not None
    assert length % ALIGN == 0
    assert ALIGN == 64
    text = content[:length]
    assert text.rstrip(b" ") == json.dumps(head, separators=(",", ":")).encode()
    assert len(text) - len(text.rstrip(b" ")) < ALIGN
    assert [o["name"] for o in head["outputs"]] == ["ALPHAS", "SMOOTHED_LENGTHS", "SMOOTHED"]
    assert [(o.get("parameters") or {}).get("binary_data_size") for o in head["outputs"]] == [16, None, 48]
    assert head["outputs"][1]["data"] == [3, 1]
    assert all(type(value) is int for value in head["outputs"][1]["data"])
    assert tensors["SMOOTHED_LENGTHS"].dtype == np.int64
    assert len(content) == length + 16 + 48


def test_without_an_id_the_answer_has_none():
    head, _, _ = answer(plan_for([("ALPHAS", False)], request_id=None), result_for())
    assert "id" not in head


@pytest.mark.parametrize("binary", [True, False])
def test_history_outputs_are_padded_with_their_lengths_and_times(binary):
    outputs = [(name, binary) for name in ("HISTORY", "HISTORY_LENGTHS", "HISTORY_TIMES")]
    head, tensors, _ = answer(plan_for(outputs, history=(2, 0)), result_for(history=True, history_times=True))
    assert [(o["name"], o["datatype"], o["shape"]) for o in head["outputs"]] == [
        ("HISTORY", "FP32", [2, 2]),
        ("HISTORY_LENGTHS", "INT64", [2]),
        ("HISTORY_TIMES", "FP64", [2, 2]),
    ]
    np.testing.assert_array_equal(tensors["HISTORY"], np.array([[1.0, 2.0], [3.0, NAN]], np.float32))
    assert tensors["HISTORY_LENGTHS"].tolist() == [2, 1]
    np.testing.assert_array_equal(tensors["HISTORY_TIMES"], np.array([[10.0, 11.5], [20.0, NAN]]))


BOUND_CASES = [
    ({"outputs": [("SMOOTHED", True)]}, {}),
    ({"outputs": [("SMOOTHED", False)]}, {}),
    ({"outputs": [("SMOOTHED", True), ("ALPHAS", True), ("SMOOTHED_LENGTHS", True)]}, {}),
    ({"outputs": [("SMOOTHED", False), ("ALPHAS", False), ("SMOOTHED_LENGTHS", False)]}, {}),
    ({"outputs": [("SMOOTHED", True)], "dtype": "float64"}, {"dtype": "float64"}),
    (
        {
            "outputs": [("HISTORY", True), ("HISTORY_LENGTHS", True), ("HISTORY_TIMES", True)],
            "history": (2, 0),
        },
        {"history": True, "history_times": True},
    ),
    (
        {
            "outputs": [("HISTORY", False), ("HISTORY_LENGTHS", False), ("HISTORY_TIMES", False)],
            "history": (2, 0),
        },
        {"history": True, "history_times": True},
    ),
]


@pytest.mark.parametrize(("plan_args", "result_args"), BOUND_CASES)
def test_the_size_bound_holds_every_output_s_bytes(plan_args, result_args):
    plan = plan_for(**plan_args)
    encoded = encode(plan, result_for(**result_args))
    header = encoded.header_length or 0
    payload = len(bytes(encoded.body)) - header
    bound = response_bound(plan)
    if header:  # binary: the outputs' bytes, the header aside
        assert payload <= bound, (payload, bound)
    else:  # JSON: the whole text, each value as at most JSON_BYTES_PER_VALUE characters
        assert len(bytes(encoded.body)) <= bound, (len(bytes(encoded.body)), bound)


@pytest.mark.parametrize(
    ("plan_args", "expected"),
    [
        # SMOOTHED: N series x C channels x (ceil(longest / stride) + 1) outputs x itemsize.
        ({"outputs": [("SMOOTHED", True)]}, 2 * 2 * 4 * 4),
        ({"outputs": [("SMOOTHED", True)], "stride": 2}, 2 * 2 * 3 * 4),
        ({"outputs": [("SMOOTHED", True)], "dtype": "float64"}, 2 * 2 * 4 * 8),
        ({"outputs": [("SMOOTHED", True)], "pairing": "each"}, 2 * 1 * 4 * 4),
        ({"outputs": [("SMOOTHED", False)]}, 2 * 2 * 4 * 48),
        # a small output: max(N, C) values of at least 8 bytes
        ({"outputs": [("ALPHAS", True)], "channels": (0, 1, 2)}, 3 * 8),
        ({"outputs": [("SMOOTHED_LENGTHS", True)], "lengths": (3, 1, 2)}, 3 * 8),
        ({"outputs": [("ALPHAS", False)]}, 2 * 48),
        # history: N x (longest + deepest history) values of at least 8 bytes
        ({"outputs": [("HISTORY", True)], "history": (2, 5)}, 2 * (3 + 5) * 8),
        ({"outputs": [("HISTORY_TIMES", False)], "history": (2, 5)}, 2 * (3 + 5) * 48),
        ({"outputs": [("SMOOTHED", True), ("ALPHAS", True)]}, 2 * 2 * 4 * 4 + 2 * 8),
        ({"outputs": [("ALPHAS", True), ("SMOOTHED", True)]}, 2 * 8 + 2 * 2 * 4 * 4),
        ({"outputs": [("ALPHAS", True), ("HISTORY", True)], "history": (2, 5)}, 2 * 8 + 2 * (3 + 5) * 8),
        ({"outputs": [("ALPHAS", True), ("SMOOTHED_LENGTHS", True)], "history": (2, 5)}, 2 * 8 + 2 * 8),
    ],
)
def test_the_size_bound_is_the_documented_sum(plan_args, expected):
    assert response_bound(plan_for(**plan_args)) == expected


def test_json_float32_values_are_written_as_float32_shortest_text():
    # 0.1 as a float32 is 0.100000001490116...: its own shortest text is "0.1", a float64's not.
    result = result_for()
    result.smoothed[0][0, 0] = np.float32(0.1)
    encoded = encode(plan_for([("SMOOTHED", False)]), result)
    text = bytes(encoded.body).decode()
    assert '"data":[0.1,null,3.0,' in text
