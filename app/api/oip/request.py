"""The model's tensors in the Open Inference Protocol, and an infer request as a ``SmoothJob``.

Inputs: ``INPUT`` FP32 or FP64 ``[N, T]`` (NaN = missing; the datatype is the precision of
the computation and of ``SMOOTHED``), ``LENGTHS`` ``[N]`` for rows right-padded to ``T``,
``HISTORY`` ``[N, H]`` with ``HISTORY_LENGTHS`` for continuation, ``TIMES`` and
``HISTORY_TIMES`` FP64 seconds in the shapes of ``INPUT`` and ``HISTORY``. The request's
parameters carry the options of ``/smooth``; ``channels`` is a comma-separated string of
names or indices. The checks and their messages are those of ``/smooth`` where the fields
are the same, so both routes refuse the same requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np

from app.api import jsonfields, jsontimes
from app.api.oip.tensors import InferRequest, Scalar, parse_request, show
from app.api.schemas import RequestError, RequestLimits, SmoothJob
from app.core.ewma import GAP_MODES, WARMUP_MODES, Gaps, Warmup
from app.serving.options import PAIRINGS, DType, Pairing

FLOATS, INTEGERS = ("FP32", "FP64"), ("INT64", "INT32")
INPUTS: dict[str, tuple[str, ...]] = {
    "INPUT": FLOATS,
    "LENGTHS": INTEGERS,
    "HISTORY": FLOATS,
    "HISTORY_LENGTHS": INTEGERS,
    "TIMES": ("FP64",),
    "HISTORY_TIMES": ("FP64",),
}
OUTPUTS = ("SMOOTHED", "SMOOTHED_LENGTHS", "ALPHAS", "HISTORY", "HISTORY_LENGTHS", "HISTORY_TIMES")
OPTIONS = ("channels", "pairing", "warmup", "gaps", "min_periods", "stride", "max_gap")
PROTOCOL = ("binary_data_output", "timeout")  # Triton's: binary outputs; a deadline in microseconds


@dataclass(frozen=True)
class InferPlan:
    """A validated infer request: the job for the service and what to answer."""

    job: SmoothJob
    outputs: list[tuple[str, bool]]  # output names in answer order, each binary or in JSON
    id: str | None
    timeout_s: float | None


def decode(body: bytes, length: int | None, limits: RequestLimits, names: tuple[str, ...]) -> InferPlan:
    """An infer body (its first ``length`` bytes the JSON header, or all of it), checked whole."""
    return plan_of(parse_request(body, length, INPUTS), limits, names)


def plan_of(request: InferRequest, limits: RequestLimits, names: tuple[str, ...]) -> InferPlan:
    parameters = request.parameters
    unknown = sorted(set(parameters) - set(OPTIONS) - set(PROTOCOL))
    if unknown:
        expected = ", ".join(OPTIONS + PROTOCOL)
        raise RequestError(400, f"unknown parameter(s) {show(unknown)}; expected {expected}")
    inputs = request.inputs
    if "INPUT" not in inputs:
        raise RequestError(400, "input INPUT is required: the series, FP32 or FP64 [N, T]")
    values = inputs["INPUT"]
    count, width = _matrix(values, "INPUT", limits, minimum=1)
    dtype: DType = "float64" if request.datatypes["INPUT"] == "FP64" else "float32"
    lengths = _lengths(inputs, "LENGTHS", count, width, minimum=1)
    series = _rows(values, lengths, "INPUT", np.float64 if dtype == "float64" else np.float32)
    history = history_lengths = None
    if "HISTORY" in inputs:
        _, depth = _matrix(inputs["HISTORY"], "HISTORY", limits, minimum=0, rows=count)
        history_lengths = _lengths(inputs, "HISTORY_LENGTHS", count, depth, minimum=0)
        history = _rows(inputs["HISTORY"], history_lengths, "HISTORY", series[0].dtype.type)
    elif "HISTORY_LENGTHS" in inputs:
        raise RequestError(400, "input HISTORY_LENGTHS needs input HISTORY")
    times, history_times = _times(inputs, lengths, history_lengths)
    max_gap = _max_gap(parameters.get("max_gap"))
    if max_gap is not None and times is None:
        raise RequestError(400, "parameter max_gap needs input TIMES")
    pairing = jsonfields.choice(parameters, "pairing", PAIRINGS, show) or "bank"
    channels = jsonfields.channels(
        _channel_list(parameters.get("channels")), names, show, count if pairing == "each" else None
    )
    min_periods = jsonfields.integer(parameters, "min_periods", 0, None, show)
    job = SmoothJob(
        series=series,
        channels=channels,
        warmup=cast(Warmup | None, jsonfields.choice(parameters, "warmup", WARMUP_MODES, show)),
        history=history,
        pairing=cast(Pairing, pairing),
        gaps=cast(Gaps, jsonfields.choice(parameters, "gaps", GAP_MODES, show) or "decay"),
        min_periods=1 if min_periods is None else min_periods,
        dtype=dtype,
        stride=jsonfields.integer(parameters, "stride", 1, limits.max_length, show) or 1,
        times=times,
        history_times=history_times,
        max_gap=max_gap,
    )
    return InferPlan(job, _outputs(request, job), request.id, _timeout(parameters.get("timeout")))


def _matrix(
    tensor: np.ndarray, name: str, limits: RequestLimits, minimum: int, rows: int | None = None
) -> tuple[int, int]:
    if tensor.ndim != 2:
        raise RequestError(400, f"input {name} must have shape [N, T], got {list(tensor.shape)}")
    count, width = tensor.shape
    if rows is not None and count != rows:
        raise RequestError(400, f"input {name} has {count} rows for the {rows} rows of INPUT")
    if count > limits.max_series:
        raise RequestError(413, f"input {name} has {count} series; the limit is {limits.max_series}")
    if width > limits.max_length:
        raise RequestError(413, f"input {name} has {width} values per row; the limit is {limits.max_length}")
    if count < 1 or width < minimum:
        raise RequestError(400, f"input {name} has shape {list(tensor.shape)}: it holds no series")
    return count, width


def _lengths(inputs: dict[str, np.ndarray], name: str, count: int, width: int, minimum: int) -> np.ndarray:
    """Each row's length: ``inputs[name]``, or the full width when it is absent."""
    if name not in inputs:
        return np.full(count, width, np.int64)
    lengths = inputs[name]
    if lengths.shape != (count,):
        raise RequestError(
            400, f"input {name} must have shape [{count}] (one per row), got {list(lengths.shape)}"
        )
    wrong = (lengths < minimum) | (lengths > width)
    if wrong.any():
        at = int(np.flatnonzero(wrong)[0])
        raise RequestError(
            400, f"{name}[{at}] = {int(lengths[at])} is not in {minimum}..{width} (the row width)"
        )
    return lengths.astype(np.int64)


def _rows(tensor: np.ndarray, lengths: np.ndarray, name: str, dtype: type[np.floating]) -> list[np.ndarray]:
    """Each row's values, views of the request where the datatype is already ``dtype``."""
    with np.errstate(over="ignore"):  # FP64 history past FP32's range: an infinity, refused below
        cast = tensor.astype(dtype, copy=False)
    rows = [row[:length] for row, length in zip(cast, lengths.tolist(), strict=True)]
    if np.isinf(cast).any():  # (the padding after a row's end may hold anything)
        for index, row in enumerate(rows):
            infinite = np.isinf(row)
            if infinite.any():
                at = int(np.flatnonzero(infinite)[0])
                shown = float(tensor[index, at])
                raise RequestError(
                    400,
                    f"{name}[{index}, {at}] = {shown!r} is not a finite {np.dtype(dtype).name} "
                    "(NaN is a missing value)",
                )
    return rows


def _times(
    inputs: dict[str, np.ndarray], lengths: np.ndarray, history_lengths: np.ndarray | None
) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
    if "TIMES" not in inputs:
        if "HISTORY_TIMES" in inputs:
            raise RequestError(400, "input HISTORY_TIMES needs input TIMES")
        return None, None
    times = _time_rows(inputs, "TIMES", "INPUT", lengths)
    if history_lengths is None:
        if "HISTORY_TIMES" in inputs:
            raise RequestError(400, "input HISTORY_TIMES needs input HISTORY")
        return times, None
    if "HISTORY_TIMES" not in inputs:
        raise RequestError(400, "input HISTORY with TIMES needs HISTORY_TIMES: the times of its values")
    history_times = _time_rows(inputs, "HISTORY_TIMES", "HISTORY", history_lengths)
    jsontimes.check_join(history_times, times)
    return times, history_times


def _time_rows(inputs: dict[str, np.ndarray], name: str, of: str, lengths: np.ndarray) -> list[np.ndarray]:
    stamps = inputs[name]
    if stamps.shape != inputs[of].shape:
        raise RequestError(
            400,
            f"input {name} must have the shape of {of}, {list(inputs[of].shape)}, got {list(stamps.shape)}",
        )
    rows = [row[:length] for row, length in zip(stamps, lengths.tolist(), strict=True)]
    for index, row in enumerate(rows):
        finite = np.isfinite(row)
        if not finite.all():
            at = int(np.flatnonzero(~finite)[0])
            raise RequestError(
                400, f"{name}[{index}, {at}] = {float(row[at])!r}: every value needs a finite time"
            )
        jsontimes.check_increasing(row, f"{name}[{index}]")
    return rows


def _max_gap(value: Scalar | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise RequestError(400, f"parameter max_gap must be a number of seconds > 0, got {show(value)}")
    return float(value)


def _timeout(value: Scalar | None) -> float | None:
    if value is None:
        return None
    if type(value) is not int or value <= 0:
        raise RequestError(400, f"parameter timeout must be a number of microseconds > 0, got {show(value)}")
    return value / 1e6


def _channel_list(value: Scalar | None) -> list[str | int] | None:
    """``"fast,slow"`` or ``"0,2"`` (or a single index) as the channel list of ``/smooth``."""
    if value is None:
        return None
    if type(value) is int:
        return [value]
    if not isinstance(value, str):
        raise RequestError(400, f"parameter channels must be a comma-separated string, got {show(value)}")
    items = [item.strip() for item in value.split(",")]
    return [int(item) if item.isdecimal() else item for item in items]


def _outputs(request: InferRequest, job: SmoothJob) -> list[tuple[str, bool]]:
    available = ["SMOOTHED", "ALPHAS"]
    if job.history is not None:
        available += ["HISTORY", "HISTORY_LENGTHS"] + (["HISTORY_TIMES"] if job.times is not None else [])
    binary = request.parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise RequestError(400, f"parameter binary_data_output must be true or false, got {show(binary)}")
    if request.outputs is None:
        return [(name, binary) for name in available]
    chosen: list[tuple[str, bool]] = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise RequestError(
                400, f"unknown output {show(output.name)}; this model gives {', '.join(OUTPUTS)}"
            )
        if output.name not in [*available, "SMOOTHED_LENGTHS"]:
            needs = "HISTORY and TIMES" if output.name == "HISTORY_TIMES" else "HISTORY"
            raise RequestError(400, f"output {output.name} needs input {needs}")
        if any(name == output.name for name, _ in chosen):
            raise RequestError(400, f"output {output.name} is asked for twice")
        chosen.append((output.name, binary if output.binary is None else output.binary))
    return chosen
