"""Splitting rows that exceed a server's limits into infer calls, and joining the answers.

Written without I/O: ``smooth_rows`` is a generator that yields each ``InferCall`` and is
sent back its answer, so the sync and the async client drive the same plan. Rows are sent
in windows of at most ``max_length`` values; each later window carries, as ``HISTORY``,
the tail the answer to the window before returned, so the joined outputs equal one call
on the whole rows. Within a window, rows go in groups under ``max_series`` and the body
limit.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.client.wire import InferCall, padded

HEADER_BYTES = 8192  # room kept in each body for its JSON header (a quarter of a small limit)
Answer = tuple[dict[str, Any], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Limits:
    """What the server takes in one request, from its model metadata."""

    max_series: int
    max_length: int
    max_body_bytes: int
    channels: tuple[str, ...]


@dataclass
class Rows:
    values: list[np.ndarray]  # 1-D, NaN = missing
    times: list[np.ndarray] | None = None  # seconds, one per row
    history: list[np.ndarray] | None = None
    history_times: list[np.ndarray] | None = None


@dataclass
class Smoothed:
    outputs: list[np.ndarray]  # (channels, outputs) per row
    channels: list[str]  # that smoothed each output row (pairing each: one per row)
    history: list[np.ndarray] | None  # the tails to send with what follows, when asked for
    history_times: list[np.ndarray] | None


def smooth_rows(
    rows: Rows, parameters: dict[str, Any], limits: Limits, dtype: np.dtype[Any], binary: bool, keep: bool
) -> Generator[InferCall, Answer, Smoothed]:
    """Every row smoothed by as many calls as the limits need; ``keep``: return the tails."""
    count = len(rows.values)
    timed = rows.times is not None
    each = parameters.get("pairing") == "each"
    per_row = list(parameters.get("channels", [])) if each else None
    pieces: list[list[np.ndarray]] = [[] for _ in range(count)]
    history = rows.history
    history_times = rows.history_times if timed else None
    windowed = max((len(v) for v in rows.values), default=0) > limits.max_length
    if (keep or windowed) and history is None:
        history = [np.empty(0, dtype) for _ in range(count)]
        history_times = [np.empty(0) for _ in range(count)] if timed else None
    per_value = dtype.itemsize + (8 if timed else 0)
    budget = _budget(limits)
    names: list[str] = []  # bank: the channels of every row; each: the channel of each row
    row_names = [""] * count
    start = 0
    while True:
        active = [i for i in range(count) if len(rows.values[i]) > start]
        if not active:
            break
        deepest = max((len(history[i]) for i in active), default=0) if history is not None else 0
        width = min(limits.max_length, max(1, (budget - deepest * per_value) // per_value))
        for group in _groups(active, rows, history, start, width, per_value, limits):
            call = _call(
                rows, group, start, width, history, history_times, parameters, per_row, dtype, binary
            )
            head, tensors = yield call
            channels = str(head.get("parameters", {}).get("channels", "")).split(",")
            names = names or channels
            smoothed, lengths = tensors["SMOOTHED"], tensors["SMOOTHED_LENGTHS"]
            for position, row in enumerate(group):
                row_names[row] = channels[position] if each else ""
                pieces[row].append(smoothed[position, :, : lengths[position]])  # a view of the answer
                if history is not None:
                    depth = int(tensors["HISTORY_LENGTHS"][position])
                    history[row] = tensors["HISTORY"][position, :depth].copy()
                    if history_times is not None:
                        history_times[row] = tensors["HISTORY_TIMES"][position, :depth].copy()
        start += width
    channels_out = 1 if each else len(names)
    # Views of the answers where one answer holds a row: the kind's rebuild copies them once.
    outputs = [
        (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1))
        if parts
        else np.empty((channels_out, 0), dtype)
        for parts in pieces
    ]
    kept = keep or rows.history is not None
    chosen = row_names if each else names
    return Smoothed(outputs, chosen, history if kept else None, history_times if kept else None)


def _budget(limits: Limits) -> int:
    """Bytes of tensors one body may carry: the limit less room for the JSON header (about
    500 bytes with every tensor and parameter; a quarter of the limit, 1 KiB to 8 KiB)."""
    return limits.max_body_bytes - min(HEADER_BYTES, max(1024, limits.max_body_bytes // 4))


def _groups(
    active: list[int],
    rows: Rows,
    history: list[np.ndarray] | None,
    start: int,
    width: int,
    per_value: int,
    limits: Limits,
) -> list[list[int]]:
    """The active rows in order, in groups that fit one request: rows are padded to the
    longest of their group (and histories to the deepest), so a group costs its count
    times its widest row."""
    budget = _budget(limits)
    groups: list[list[int]] = [[]]
    widest = deepest = 0
    for row in active:
        length = min(len(rows.values[row]) - start, width)
        depth = len(history[row]) if history is not None else 0
        grown = len(groups[-1]) + 1
        size = grown * ((max(widest, length) + max(deepest, depth)) * per_value + 16)
        if groups[-1] and (grown > limits.max_series or size > budget):
            groups.append([])
            widest = deepest = 0
        groups[-1].append(row)
        widest, deepest = max(widest, length), max(deepest, depth)
    return groups


def _call(
    rows: Rows,
    group: list[int],
    start: int,
    width: int,
    history: list[np.ndarray] | None,
    history_times: list[np.ndarray] | None,
    parameters: dict[str, Any],
    per_row: list[Any] | None,
    dtype: np.dtype[Any],
    binary: bool,
) -> InferCall:
    values = [rows.values[i][start : start + width] for i in group]
    lengths = np.array([len(v) for v in values], np.int64)
    inputs = {"INPUT": padded(values, dtype), "LENGTHS": lengths}
    outputs = ["SMOOTHED", "SMOOTHED_LENGTHS"]
    if rows.times is not None:
        stamps = [rows.times[i][start : start + width] for i in group]
        inputs["TIMES"] = padded(stamps, np.dtype(np.float64), inputs["INPUT"].shape[1])
    if history is not None:
        tails = [history[i] for i in group]
        inputs["HISTORY"] = padded(tails, dtype)
        inputs["HISTORY_LENGTHS"] = np.array([len(t) for t in tails], np.int64)
        outputs += ["HISTORY", "HISTORY_LENGTHS"]
        if history_times is not None:
            inputs["HISTORY_TIMES"] = padded([history_times[i] for i in group], np.dtype(np.float64))
            outputs.append("HISTORY_TIMES")
    sent = {key: value for key, value in parameters.items() if key != "channels"}
    if per_row is not None:
        sent["channels"] = ",".join(str(per_row[i]) for i in group)
    elif parameters.get("channels") is not None:
        sent["channels"] = ",".join(str(c) for c in parameters["channels"])
    return InferCall(inputs, sent, outputs, binary)
