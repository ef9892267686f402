"""What the ``convewma`` subcommands share: the one-line error, ``--out`` checks, help text."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

DATA_HELP = "CSV (header = channel names, optional series_id and index columns), .npy or .npz; repeatable"
INDEX_HELP = (
    "CSV column of row labels (e.g. timestamps), not smoothed (default: the first column "
    "other than series_id and the time column if its header is empty, or if none of its "
    "cells is a number and another column holds data)"
)


TIME_HELP = (
    "CSV column of times, not smoothed (an index column may be given too): ISO 8601 dates "
    "(2024-05-01T12:00:00.25Z, 2024-05-01 12:00:00+02:00; without an offset, UTC) or numbers "
    "of seconds, strictly increasing within each series; each lag then decays by the seconds "
    "that passed (default: none, lags are steps)"
)


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


class HelpFormatter(argparse.HelpFormatter):
    """Says "(required)" or "(default: ...)" after every option's help, unless it does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)"


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (no upper bound when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def output_path(text: str) -> Path:
    """``--out``, checked before any work: its folder must exist (nothing is created)."""
    path = Path(text)
    folder = path.parent
    if not folder.exists():
        raise CliError(f"--out {text}: the folder {folder} does not exist (create it first)")
    if not folder.is_dir():
        raise CliError(f"--out {text}: {folder} is not a folder")
    if path.is_dir():
        raise CliError(f"--out {text}: is a folder, not a file name")
    return path


@contextlib.contextmanager
def writing(path: Path) -> Iterator[TextIO]:
    """Open ``--out`` for text, turning an OS refusal into one plain line."""
    try:
        handle = path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--out {path}: cannot write the file: {exc.strerror or exc}") from None
    with handle:
        yield handle
