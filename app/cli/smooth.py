"""``convewma smooth``: apply a weights file to the columns of data files, writing CSV.

Pairing: a column whose name is a model channel is smoothed by that channel only and
keeps its name (``auto``, the default, and ``each``, which requires it of every column);
any other column, or every column with ``bank``, is smoothed by every channel and
written as ``column:channel`` columns. Missing inputs (empty cells) are smoothed over
(``--gaps``) and missing outputs are written as empty cells.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from app.cli.common import (
    DATA_HELP,
    INDEX_HELP,
    TIME_HELP,
    CliError,
    HelpFormatter,
    int_in_range,
    output_path,
    positive_seconds,
    writing,
)
from app.cli.remote import SmoothSeries, channels_of, remote_series
from app.client import ConvEWMAClient
from app.core.ewma import GAP_MODES, WARMUP_MODES, ConvEWMA
from app.core.paths import DEFAULT_WEIGHTS
from app.core.weights import load_weights
from app.training.data import Dataset, load_dataset

PAIRINGS = ("auto", "each", "bank")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
FLOAT32_MAX = float(np.finfo(np.float32).max)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    smooth = commands.add_parser(
        "smooth",
        help="smooth the columns of a file with the model's channels",
        formatter_class=HelpFormatter,
    )
    smooth.add_argument("--data", action="append", required=True, metavar="FILE", help=DATA_HELP)
    smooth.add_argument("--index-col", metavar="NAME", help=INDEX_HELP + "; copied to the output")
    smooth.add_argument("--weights", default=str(DEFAULT_WEIGHTS), metavar="FILE", help="safetensors model")
    smooth.add_argument(
        "--url",
        metavar="URL",
        help="smooth through a running service at URL (e.g. http://127.0.0.1:8000) with its model, "
        "instead of --weights (default: locally)",
    )
    smooth.add_argument(
        "--pairing",
        choices=PAIRINGS,
        default="auto",
        help="each: every column by the channel of its name (written under its name); bank: every "
        "column by every channel (written as column:channel); auto: each for the columns named "
        "like a channel, bank for the others",
    )
    smooth.add_argument("--warmup", choices=WARMUP_MODES, help="warm-up mode (default: the model's own)")
    smooth.add_argument(
        "--gaps",
        choices=GAP_MODES,
        default="decay",
        help="missing values (empty cells): decay: older values keep decaying across a gap "
        "(pandas ignore_na=False); skip: observed values as if adjacent (ignore_na=True)",
    )
    smooth.add_argument(
        "--min-periods",
        type=int_in_range(0),
        default=1,
        help="an output needs this many observed values in its window, else it is an empty cell",
    )
    smooth.add_argument(
        "--stride", type=int_in_range(1), default=1, help="write every s-th step: steps 0, s, 2s, ..."
    )
    smooth.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="precision of the computation and of the written values (7 or 17 digits)",
    )
    smooth.add_argument("--time-col", metavar="NAME", help=f"{TIME_HELP}; copied to the output")
    smooth.add_argument(
        "--max-gap",
        type=positive_seconds,
        metavar="SECONDS",
        help="with --time-col: lags older than this are out of the window (a reset after an outage) "
        "(default: none)",
    )
    smooth.add_argument("--out", metavar="FILE", help="CSV to write, in an existing folder (default: stdout)")


def pair_columns(columns: tuple[str, ...], channels: tuple[str, ...], pairing: str) -> list[int | None]:
    """For each column, the index of the one channel that smooths it, or None for all."""
    if pairing == "bank":
        return [None] * len(columns)
    if pairing == "each":
        unknown = [name for name in columns if name not in channels]
        if unknown:
            raise CliError(
                f"--pairing each: column {unknown[0]!r} is not a model channel"
                f" (channels: {', '.join(channels)}; use --pairing bank or auto)"
            )
    return [channels.index(name) if name in channels else None for name in columns]


def output_header(columns: tuple[str, ...], channels: tuple[str, ...], pairs: list[int | None]) -> list[str]:
    header = ["series"]
    for name, channel in zip(columns, pairs, strict=True):
        header.extend([name] if channel is not None else [f"{name}:{c}" for c in channels])
    return header


def smooth_series(
    model: ConvEWMA,
    values: np.ndarray,
    pairs: list[int | None],
    args: argparse.Namespace,
    times: np.ndarray | None = None,
) -> np.ndarray:
    """One series ``(S, T)`` (its columns at ``times``, seconds, if given) to its output
    columns, ``(ceil(T / stride), width)``."""
    options: dict[str, object] = {"gaps": args.gaps, "min_periods": args.min_periods, "stride": args.stride}
    if times is not None:
        options |= {"times": torch.from_numpy(times)[None], "max_gap": args.max_gap}
    x = torch.tensor(values, dtype=DTYPES[args.dtype])
    bank = [j for j, channel in enumerate(pairs) if channel is None]
    own = {j: channel for j, channel in enumerate(pairs) if channel is not None}
    blocks: dict[int, torch.Tensor] = {}  # column -> its output columns, (C or 1, T')
    if bank:
        rows_options = dict(options)
        if times is not None:  # every column of the file shares the time column
            rows_options["times"] = torch.from_numpy(times)[None].expand(len(bank), -1)
        banked = model(x[bank], args.warmup, **rows_options)  # (B, C, T')
        blocks.update((j, banked[i]) for i, j in enumerate(bank))
    if own:
        # Depth-wise: channel c of one input row is smoothed by alpha_c alone. The
        # channels no column asks for get zeros, which never take the gap-aware path.
        rows = x.new_zeros(model.channels, x.shape[1])
        for j, channel in own.items():
            rows[channel] = x[j]
        paired = model(rows[None], args.warmup, **options)[0]  # (C, T')
        blocks.update((j, paired[channel : channel + 1]) for j, channel in own.items())
    return torch.cat([blocks[j] for j in range(len(pairs))]).t().numpy()  # in --dtype


def _cells(row: np.ndarray, dtype: str) -> list[str]:
    # float32 holds about 7 significant digits; float64's repr is its shortest exact text.
    if dtype == "float32":
        return ["" if v != v else f"{v:.7g}" for v in row.tolist()]
    return ["" if v != v else repr(v) for v in row.tolist()]


def _labels(dataset: Dataset, position: int, steps: int, stride: int) -> list[list[str]]:
    """Per written step, the cells of the index column, then of the time column, as read."""
    columns: list[tuple[str, ...]] = []
    if dataset.index_name is not None:  # a series from a file without an index: empty cells
        columns.append(dataset.index_of(position) or ("",) * steps)
    if dataset.time_cells:
        columns.append(dataset.time_cells[position])
    picked = [column[::stride] for column in columns]
    return [[column[t] for column in picked] for t in range(-(-steps // stride))]


def _check_range(dataset: Dataset, dtype: str) -> None:
    if dtype != "float32":
        return
    for position, values in enumerate(dataset.series):
        magnitudes = np.abs(values)
        if (magnitudes > FLOAT32_MAX).any():  # NaN (missing) compares False
            largest = float(np.nanmax(magnitudes))
            raise CliError(
                f"series {position}: {largest:g} is outside the float32 range; use --dtype float64"
            )


def run(args: argparse.Namespace, console: Console) -> None:
    """``convewma smooth``: one row per written step, series after series."""
    if args.url is not None:
        with ConvEWMAClient(args.url) as client:
            channels = channels_of(client)
            summary = f"service {args.url}"
            return write(args, console, channels, summary, remote_series(client, args))
    loaded = load_weights(args.weights)
    card, model = loaded.card, loaded.model
    if args.min_periods > card.kernel_size:
        raise CliError(
            f"--min-periods {args.min_periods}: must be in [0, {card.kernel_size}] (the model's kernel_size)"
        )
    alphas = ", ".join(f"{n}={a:.4f}" for n, a in zip(card.channels, model.alphas.tolist(), strict=True))
    summary = f"model {loaded.path} (sha256 {loaded.sha256[:12]}), alphas: {alphas}"

    def local(values: np.ndarray, pairs: list[int | None], times: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode():
            return smooth_series(model, values, pairs, args, times)

    write(args, console, card.channels, summary, local)


def write(
    args: argparse.Namespace, console: Console, channels: tuple[str, ...], summary: str, smooth: SmoothSeries
) -> None:
    """Reads the files, then writes each series' rows as ``smooth`` gives them."""
    out = output_path(args.out) if args.out is not None else None
    if args.max_gap is not None and args.time_col is None:
        raise CliError("--max-gap needs --time-col")
    paths = [Path(p) for p in args.data]
    dataset = load_dataset(paths, min_length=1, index_col=args.index_col, time_col=args.time_col)
    _check_range(dataset, args.dtype)
    pairs = pair_columns(dataset.channels, channels, args.pairing)
    own = [dataset.channels[j] for j, channel in enumerate(pairs) if channel is not None]
    shared = [dataset.channels[j] for j, channel in enumerate(pairs) if channel is None]
    groups = (("own channel", own), ("all channels", shared))
    console.print(
        f"{summary}; " + "; ".join(f"{label}: {', '.join(names)}" for label, names in groups if names),
        highlight=False,
    )
    names = [name for name in (dataset.index_name, dataset.time_name) if name is not None]
    header = [*names, *output_header(dataset.channels, channels, pairs)]
    # Written series by series, so a reader that stops early (head) stops the work too.
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(writing(out)) if out is not None else sys.stdout
        writer = csv.writer(target)
        writer.writerow(header)
        for position, values in enumerate(dataset.series):  # bounded by the files
            times = dataset.times[position] if dataset.times else None
            table = smooth(values, pairs, times)
            labels = _labels(dataset, position, values.shape[1], args.stride)
            rows = [
                [*label, str(position), *_cells(row, args.dtype)]
                for label, row in zip(labels, table, strict=True)
            ]
            writer.writerows(rows)
        target.flush()  # a closed pipe shows here, inside main's handler, not at exit
