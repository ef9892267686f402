"""The ``convewma`` command line: ``train`` fits weights, ``smooth`` applies them to a file,
``serve`` starts the HTTP service (app/cli/train.py, app/cli/smooth.py, app/cli/serve.py).

Every user error (bad data, bad weights, a bad setting, an unwritable ``--out``) is one
line on stderr, never wrapped, and exit status 2; a closed stdout (``convewma smooth |
head -1``) ends quietly with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.text import Text

import app
from app.cli import serve, smooth, train
from app.cli.common import CliError
from app.core.weights import WeightsError
from app.training.data import DataError


def _version() -> str:
    try:
        version = importlib.metadata.version("convewma-service")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        version = app.__version__
    return f"%(prog)s {version} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convewma",
        description="ConvEWMA: learned exponential smoothing",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    train.add_parser(commands)
    smooth.add_parser(commands)
    serve.add_parser(commands)
    return parser


def _one_line(command: str, exc: BaseException) -> Text:
    message = " ".join(str(exc).splitlines()) or type(exc).__name__
    return Text.assemble((f"convewma {command}: error:", "bold red"), " ", message)


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so the exit flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # soft_wrap: a message is one line however narrow the terminal (or 80 columns when
    # stderr is not one); markup off: names from files are printed as they are.
    console = Console(stderr=True, soft_wrap=True, markup=False)
    handlers = {"train": train.run, "smooth": smooth.run, "serve": serve.run}
    try:
        handlers[args.command](args, console)
    except BrokenPipeError:  # the reader of stdout stopped (`| head`): not an error
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except (CliError, DataError, WeightsError, ValueError, OSError) as exc:
        with contextlib.suppress(OSError):
            console.print(_one_line(args.command, exc))  # a Text: neither markup nor highlighting
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
