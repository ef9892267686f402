"""``app.api.oip.request``: an infer request as a ``SmoothJob`` and the outputs to answer,
without the app. Refusals are checked for their status and whole message (422 where the
check is ``/smooth``'s own: the route answers 400 for both under /v2); plans for every
field the service reads."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from app.api.oip.request import InferPlan, decode, plan_of
from app.api.oip.tensors import InferRequest
from app.api.schemas import RequestError, RequestLimits

LIMITS = RequestLimits(max_series=4, max_length=16)
NAMES = ("fast", "mid", "slow")


def tensor(name: str, data: Any, datatype: str = "FP32", shape: list[int] | None = None) -> dict[str, Any]:
    array = np.asarray(data)
    return {
        "name": name,
        "shape": list(array.shape) if shape is None else shape,
        "datatype": datatype,
        "data": np.where(np.isnan(array), None, array).tolist() if array.dtype.kind == "f" else data,
    }


ONE = tensor("INPUT", [[1.0, 2.0]])
TWO = tensor("INPUT", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def plan(inputs: list[dict[str, Any]], **document: Any) -> InferPlan:
    return decode(json.dumps({"inputs": inputs, **document}).encode(), None, LIMITS, NAMES)


def refusal(inputs: list[dict[str, Any]], **document: Any) -> tuple[int, str]:
    with pytest.raises(RequestError) as caught:
        plan(inputs, **document)
    return caught.value.status, caught.value.detail


REFUSED: list[tuple[list[dict[str, Any]], dict[str, Any], int, str]] = [
    (
        [tensor("LENGTHS", [1], "INT64")],
        {},
        400,
        "input INPUT is required: the series, FP32 or FP64 [N, T]",
    ),
    ([tensor("INPUT", [[1.0] * 17])], {}, 413, "input INPUT has 17 values per row; the limit is 16"),
    ([tensor("INPUT", [[1.0]] * 5)], {}, 413, "input INPUT has 5 series; the limit is 4"),
    ([tensor("INPUT", [], shape=[1, 0])], {}, 400, "input INPUT has shape [1, 0]: it holds no series"),
    (
        [TWO, tensor("LENGTHS", [3, 4], "INT32")],
        {},
        400,
        "LENGTHS[1] = 4 is not in 1..3 (the row width)",
    ),
    (
        [TWO, tensor("LENGTHS", [[3, 3]], "INT32")],
        {},
        400,
        "input LENGTHS must have shape [2] (one per row), got [1, 2]",
    ),
    (
        [TWO, tensor("HISTORY", [[1.0]])],
        {},
        400,
        "input HISTORY has 1 rows for the 2 rows of INPUT",
    ),
    (
        [ONE, tensor("HISTORY", [[1.0] * 17])],
        {},
        413,
        "input HISTORY has 17 values per row; the limit is 16",
    ),
    (
        [ONE, tensor("HISTORY", [[1.0]]), tensor("HISTORY_LENGTHS", [2], "INT64")],
        {},
        400,
        "HISTORY_LENGTHS[0] = 2 is not in 0..1 (the row width)",
    ),
    ([ONE, tensor("HISTORY_LENGTHS", [0], "INT64")], {}, 400, "input HISTORY_LENGTHS needs input HISTORY"),
    (
        [ONE, tensor("HISTORY", [[1e39]], "FP64")],
        {},
        400,
        "HISTORY[0, 0] = 1e+39 is not a finite float32 (NaN is a missing value)",
    ),
    (
        [{**tensor("INPUT", [[1.0, 2.0], [3.0, 4.0]], "FP64"), "data": [1.0, 2.0, 3.0, 1e400]}],
        {},
        400,
        "INPUT[1, 1] = inf is not a finite float64 (NaN is a missing value)",
    ),
    (
        [ONE, tensor("TIMES", [[0.0, 1.0, 2.0]], "FP64")],
        {},
        400,
        "input TIMES must have the shape of INPUT, [1, 2], got [1, 3]",
    ),
    (
        [ONE, tensor("TIMES", [[0.0, float("nan")]], "FP64")],
        {},
        400,
        "TIMES[0, 1] = nan: every value needs a finite time",
    ),
    (
        [ONE, tensor("TIMES", [[3.0, 3.0]], "FP64")],
        {},
        422,
        "TIMES[0][1] = 3.0 s is not after TIMES[0][0] = 3.0 s: times must be strictly increasing",
    ),
    (
        [ONE, tensor("TIMES", [[0.0, 1.0]], "FP64"), tensor("HISTORY_TIMES", [[0.0]], "FP64")],
        {},
        400,
        "input HISTORY_TIMES needs input HISTORY",
    ),
    (
        [
            ONE,
            tensor("TIMES", [[5.0, 6.0]], "FP64"),
            tensor("HISTORY", [[1.0, 2.0]]),
            tensor("HISTORY_TIMES", [[1.0, float("inf")]], "FP64"),
        ],
        {},
        400,
        "HISTORY_TIMES[0, 1] = inf: every value needs a finite time",
    ),
    ([ONE], {"parameters": {"max_gap": 5}}, 400, "parameter max_gap needs input TIMES"),
    (
        [ONE, tensor("HISTORY_TIMES", [[0.0]], "FP64")],
        {},
        400,
        "input HISTORY_TIMES needs input TIMES",
    ),
    (
        [ONE, tensor("TIMES", [[5.0, 6.0]], "FP64"), tensor("HISTORY", [[1.0]])],
        {},
        400,
        "input HISTORY with TIMES needs HISTORY_TIMES: the times of its values",
    ),
    (
        [ONE],
        {"parameters": {"pairing": "zip"}},
        422,
        "'pairing' must be one of ['bank', 'each'], got 'zip'",
    ),
    *(
        (
            [ONE],
            {"parameters": {"max_gap": value}},
            400,
            f"parameter max_gap must be a number of seconds > 0, got {shown}",
        )
        for value, shown in [(True, "True"), ("5", "'5'"), (-1, "-1"), (0.0, "0.0"), (1e400, "inf")]
    ),
    *(
        (
            [ONE],
            {"parameters": {"timeout": value}},
            400,
            f"parameter timeout must be a number of microseconds > 0, got {shown}",
        )
        for value, shown in [(0, "0"), (1.5, "1.5"), (True, "True"), ("9", "'9'")]
    ),
    (
        [ONE],
        {"parameters": {"channels": True}},
        400,
        "parameter channels must be a comma-separated string, got True",
    ),
    (
        [ONE],
        {"parameters": {"channels": "fast,quick"}},
        422,
        "channels[1] = 'quick' is not one of ['fast', 'mid', 'slow'] or 0..2",
    ),
    (
        [ONE],
        {"parameters": {"span": 2, "alpha": 0.5}},
        400,
        "unknown parameter(s) ['alpha', 'span']; expected channels, pairing, warmup, gaps, "
        "min_periods, stride, max_gap, binary_data_output, timeout",
    ),
    ([ONE], {"parameters": {"stride": 17}}, 422, "'stride' must be an integer in 1..16, got 17"),
    ([ONE], {"parameters": {"min_periods": -1}}, 422, "'min_periods' must be an integer >= 0, got -1"),
    (
        [ONE],
        {"parameters": {"warmup": "cold"}},
        422,
        "'warmup' must be one of ['zeros', 'adjust'], got 'cold'",
    ),
    (
        [ONE],
        {"parameters": {"binary_data_output": "yes"}},
        400,
        "parameter binary_data_output must be true or false, got 'yes'",
    ),
    (
        [ONE],
        {"outputs": [{"name": "SMOOTHED"}, {"name": "SMOOTHED"}]},
        400,
        "output SMOOTHED is asked for twice",
    ),
    (
        [ONE],
        {"outputs": [{"name": "smoothed"}]},
        400,
        "unknown output 'smoothed'; this model gives SMOOTHED, SMOOTHED_LENGTHS, ALPHAS, HISTORY, "
        "HISTORY_LENGTHS, HISTORY_TIMES",
    ),
    ([ONE], {"outputs": [{"name": "HISTORY_LENGTHS"}]}, 400, "output HISTORY_LENGTHS needs input HISTORY"),
    (
        [ONE, tensor("HISTORY", [[1.0]])],
        {"outputs": [{"name": "HISTORY_TIMES"}]},
        400,
        "output HISTORY_TIMES needs input HISTORY and TIMES",
    ),
]


@pytest.mark.parametrize(("inputs", "document", "status", "message"), REFUSED)
def test_a_request_the_model_cannot_take_is_refused_with_its_exact_reason(inputs, document, status, message):
    assert refusal(inputs, **document) == (status, message)


def test_a_plain_request_takes_every_default_and_answers_smoothed_and_alphas_in_json():
    chosen = plan([TWO])
    job = chosen.job
    assert [row.tolist() for row in job.series] == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert all(row.dtype == np.float32 for row in job.series)
    assert job.dtype == "float32"
    assert job.channels == [0, 1, 2]
    assert (job.warmup, job.pairing, job.gaps, job.min_periods, job.stride) == (None, "bank", "decay", 1, 1)
    assert (job.history, job.times, job.history_times, job.max_gap) == (None, None, None, None)
    assert chosen.outputs == [("SMOOTHED", False), ("ALPHAS", False)]
    assert (chosen.id, chosen.timeout_s) == (None, None)


def test_every_option_travels_into_the_job():
    chosen = plan(
        [ONE, tensor("TIMES", [[10.0, 12.5]], "FP64")],
        id="r-7",
        parameters={
            "channels": " slow , 0",
            "pairing": "bank",
            "warmup": "adjust",
            "gaps": "skip",
            "min_periods": 0,
            "stride": 2,
            "max_gap": 3,
            "timeout": 250_000,
            "binary_data_output": True,
        },
    )
    job = chosen.job
    assert job.channels == [2, 0]
    assert (job.warmup, job.gaps, job.min_periods, job.stride, job.max_gap) == ("adjust", "skip", 0, 2, 3.0)
    assert isinstance(job.max_gap, float)
    assert [row.tolist() for row in job.times or []] == [[10.0, 12.5]]
    assert chosen.id == "r-7"
    assert chosen.timeout_s == 0.25
    assert chosen.outputs == [("SMOOTHED", True), ("ALPHAS", True)]


@pytest.mark.parametrize(("channels", "expected"), [(1, [1]), ("2", [2]), ("mid", [1]), ("slow,mid", [2, 1])])
def test_channels_are_names_or_indices_separated_by_commas(channels, expected):
    assert plan([ONE], parameters={"channels": channels}).job.channels == expected


def test_pairing_each_takes_one_channel_per_series():
    job = plan([TWO], parameters={"pairing": "each", "channels": "slow,fast"}).job
    assert (job.pairing, job.channels) == ("each", [2, 0])
    assert plan([TWO], parameters={"pairing": "each", "channels": "fast,fast"}).job.channels == [0, 0]
    assert refusal([TWO], parameters={"pairing": "each", "channels": "slow"})[1].startswith(
        "'channels' has 1 entries for 2 series"
    )


def test_fp64_input_computes_in_float64_and_history_follows_its_datatype():
    job = plan([tensor("INPUT", [[1.0, 2.0]], "FP64"), tensor("HISTORY", [[0.5]], "FP32")]).job
    assert job.dtype == "float64"
    assert job.series[0].dtype == np.float64
    assert job.history is not None
    assert job.history[0].dtype == np.float64


def test_lengths_cut_each_row_and_whatever_pads_it_is_ignored():
    values = tensor("INPUT", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    values["data"] = [1.0, 2.0, 3.0, 4.0, 1e39, None]  # past FP32's range, but padding
    job = plan(
        [values, tensor("LENGTHS", [3, 1], "INT64"), tensor("TIMES", [[1, 2, 3], [7, 0, 0]], "FP64")]
    ).job
    assert [row.tolist() for row in job.series] == [[1.0, 2.0, 3.0], [4.0]]
    assert [row.tolist() for row in job.times or []] == [[1.0, 2.0, 3.0], [7.0]]


def test_history_with_lengths_may_be_empty_and_gives_the_history_outputs():
    chosen = plan(
        [
            TWO,
            tensor("HISTORY", [[1.0, 2.0], [3.0, 4.0]]),
            tensor("HISTORY_LENGTHS", [0, 2], "INT32"),
        ]
    )
    assert [row.tolist() for row in chosen.job.history or []] == [[], [3.0, 4.0]]
    assert chosen.outputs == [
        ("SMOOTHED", False),
        ("ALPHAS", False),
        ("HISTORY", False),
        ("HISTORY_LENGTHS", False),
    ]


def test_a_zero_width_history_is_an_empty_history_per_row():
    job = plan([ONE, tensor("HISTORY", [], shape=[1, 0])]).job
    assert [row.tolist() for row in job.history or []] == [[]]


def test_history_times_join_the_times_and_add_their_output():
    chosen = plan(
        [
            ONE,
            tensor("TIMES", [[5.0, 6.0]], "FP64"),
            tensor("HISTORY", [[1.0, 2.0]]),
            tensor("HISTORY_TIMES", [[3.0, 4.5]], "FP64"),
        ],
        outputs=[
            {"name": "HISTORY_TIMES", "parameters": {"binary_data": True}},
            {"name": "SMOOTHED_LENGTHS"},
        ],
        parameters={"binary_data_output": False},
    )
    assert [row.tolist() for row in chosen.job.history_times or []] == [[3.0, 4.5]]
    assert chosen.outputs == [("HISTORY_TIMES", True), ("SMOOTHED_LENGTHS", False)]


@pytest.mark.parametrize(
    ("parameters", "max_gap", "timeout_s"), [({"max_gap": 0.5, "timeout": 1}, 0.5, 1e-6)]
)
def test_the_smallest_deadline_and_a_max_gap_under_a_second_are_taken(parameters, max_gap, timeout_s):
    chosen = plan([ONE, tensor("TIMES", [[0.0, 0.25]], "FP64")], parameters=parameters)
    assert (chosen.job.max_gap, chosen.timeout_s) == (max_gap, timeout_s)


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_rows_in_the_computation_s_datatype_are_views_of_the_request_and_others_are_cast(datatype):
    # The binary path copies no values while parsing: each series is a slice of its tensor.
    values = np.arange(6, dtype=np.float32 if datatype == "FP32" else np.float64).reshape(2, 3)
    history = np.ones((2, 2), np.float32)
    request = InferRequest(
        id=None,
        inputs={"INPUT": values, "HISTORY": history},
        datatypes={"INPUT": datatype, "HISTORY": "FP32"},
        parameters={},
        outputs=None,
    )
    job = plan_of(request, LIMITS, NAMES).job
    assert all(np.shares_memory(row, values) for row in job.series)
    assert job.history is not None
    shared = [np.shares_memory(row, history) for row in job.history]
    assert shared == [datatype == "FP32"] * 2
    assert all(row.dtype == values.dtype for row in job.history)
