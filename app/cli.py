"""The ``convewma`` command line: ``train`` fits weights, ``smooth`` applies them to a file,
``serve`` starts the HTTP service.

Every user error (bad data, bad weights, a bad setting, an unwritable ``--out``) is one
line on stderr, never wrapped, and exit status 2; a closed stdout (``convewma smooth |
head -1``) ends quietly with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib.metadata
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

import app
from app.data import DataError, load_dataset
from app.ewma import MAX_KERNEL_SIZE, WARMUP_MODES
from app.paths import DEFAULT_WEIGHTS
from app.train import TrainConfig, fit
from app.weights import ModelCard, WeightsError, load_weights, save_weights


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def _created_at() -> str:
    # SOURCE_DATE_EPOCH (reproducible-builds.org) pins the timestamp so that a retrain
    # with the same inputs writes the same bytes.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return when.replace(microsecond=0).isoformat()


def _kernel_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_KERNEL_SIZE:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_KERNEL_SIZE}], got {value}")
    return value


def _output_path(text: str) -> Path:
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
def _writing(path: Path) -> Iterator[TextIO]:
    """Open ``--out`` for text, turning an OS refusal into one plain line."""
    try:
        handle = path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"--out {path}: cannot write the file: {exc.strerror or exc}") from None
    with handle:
        yield handle


def _check_device(name: str) -> None:
    """Refuse a device this machine lacks before the server starts, in one line.

    The service resolves the device only inside its lifespan, where a failure is a
    traceback and exit status 3; ``serve`` calls this first.
    """
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(
            f"invalid settings: device: {name!r} is not a device (auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        reason = (
            f"this torch ({torch.__version__}) is built without CUDA"
            if torch.version.cuda is None
            else "no CUDA device is visible"
        )
        raise CliError(f"invalid settings: device: {name!r} but {reason}; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CliError(
            f"invalid settings: device: {name!r} but {count} CUDA device(s) are visible"
            f" (cuda:0 .. cuda:{count - 1})"
        )


def _train(args: argparse.Namespace, console: Console) -> None:
    out = _output_path(args.out)  # before the data is read and the fit runs
    config = TrainConfig(
        kernel_size=args.kernel_size,
        normalize=args.normalize,
        warmup=args.warmup,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
    )
    dataset = load_dataset([Path(p) for p in args.data], config.min_length, index_col=args.index_col)
    console.print(f"training on {dataset.description}, channels {list(dataset.channels)}", highlight=False)
    with Progress(
        TextColumn("epoch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as progress:
        task = progress.add_task("train", total=config.epochs, loss="-")
        result = fit(
            dataset, config, lambda epoch, loss: progress.update(task, advance=1, loss=f"{loss:.6g}")
        )
    card = ModelCard(
        channels=dataset.channels,
        kernel_size=config.kernel_size,
        normalize=config.normalize,
        warmup=config.warmup,
        eps=result.model.eps,
        training_data=dataset.description,
        final_loss=result.final_loss,
        created_at=_created_at(),
        extra={
            "epochs": str(config.epochs),
            "lr": repr(config.lr),
            "seed": str(config.seed),
            "torch_version": torch.__version__.split("+")[0],
        },
    )
    try:
        save_weights(result.model, card, out)
    except OSError as exc:
        raise CliError(f"--out {out}: cannot write the file: {exc.strerror or exc}") from None
    table = Table(title=f"ConvEWMA weights written to {out}")
    table.add_column("channel")
    table.add_column("alpha", justify="right")
    table.add_column("one-step MSE", justify="right")
    for name, alpha, loss in zip(
        dataset.channels, result.model.alphas.tolist(), result.channel_losses, strict=True
    ):
        table.add_row(name, f"{alpha:.6f}", f"{loss:.6g}")
    console.print(table)


def _smooth(args: argparse.Namespace, console: Console) -> None:
    out = _output_path(args.out) if args.out is not None else None
    loaded = load_weights(args.weights)
    card = loaded.card
    dataset = load_dataset([Path(p) for p in args.data], min_length=1, index_col=args.index_col)
    alphas = ", ".join(
        f"{n}={a:.4f}" for n, a in zip(card.channels, loaded.model.alphas.tolist(), strict=True)
    )
    console.print(f"model {loaded.path} (sha256 {loaded.sha256[:12]}), alphas: {alphas}", highlight=False)
    # One row per time step: [index,] series number, then every input column smoothed by
    # every model channel. Written series by series, so a reader that stops early (head)
    # stops the work too.
    header = ["series", *(f"{src}:{ch}" for src in dataset.channels for ch in card.channels)]
    if dataset.index_name is not None:
        header.insert(0, dataset.index_name)
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(_writing(out)) if out is not None else sys.stdout
        writer = csv.writer(target)
        writer.writerow(header)
        with torch.inference_mode():
            for position, values in enumerate(dataset.series):  # bounded by the files
                x = torch.from_numpy(values).to(torch.float32)  # (S, T): each input column a series
                y = loaded.model(x, warmup=args.warmup)  # (S, C, T)
                flat = y.reshape(-1, y.shape[-1]).t().tolist()
                rows = [[str(position), *(f"{v:.7g}" for v in row)] for row in flat]
                if dataset.index_name is not None:
                    labels = dataset.index_of(position) or ("",) * len(rows)
                    rows = [[label, *row] for label, row in zip(labels, rows, strict=True)]
                writer.writerows(rows)
        target.flush()  # a closed pipe shows here, inside main's handler, not at exit


def _serve(args: argparse.Namespace, console: Console) -> None:
    import logging
    import math

    import uvicorn
    from pydantic import ValidationError

    from app.drain import ExitZeroServer
    from app.main import create_app
    from app.protocol import http_protocol, raise_open_files_limit
    from app.settings import Settings

    overrides = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("weights", args.weights),
            ("device", args.device),
        )
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise CliError(
            "invalid settings: "
            + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        ) from None
    _check_device(settings.device)  # a missing GPU: one line, exit 2 (not a traceback, exit 3)
    load_weights(settings.weights)  # fail fast, in one line, before uvicorn starts
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["convewma"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config = uvicorn.Config(
        create_app(settings),  # its lifespan drains on SIGTERM (app/drain.py)
        host=settings.host,
        port=settings.port,
        workers=1,  # batches form inside one process; scale out with replicas
        log_level=settings.log_level,
        log_config=log_config,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        # Idle, header and connection limits (app/protocol.py); httptools, as "auto" picks.
        http=http_protocol(settings),
        # The protocol uses idle_timeout_s as is; uvicorn's option is whole seconds.
        timeout_keep_alive=max(1, math.ceil(settings.idle_timeout_s)),
    )
    # Each connection is a file descriptor; refused ones, briefly, too.
    open_files = raise_open_files_limit()
    log = logging.getLogger("convewma")
    log.info("open files limit %s, max_connections %d", open_files, settings.max_connections)
    if open_files is not None and open_files < 2 * settings.max_connections + 64:
        log.warning(
            "open files limit %d is low for max_connections %d: raise `ulimit -n` or lower it",
            open_files,
            settings.max_connections,
        )
    ExitZeroServer(config).run()  # a drained, graceful stop exits 0


def _version() -> str:
    try:
        version = importlib.metadata.version("convewma-service")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        version = app.__version__
    return f"%(prog)s {version} (torch {torch.__version__}, Python {sys.version.split()[0]})"


class _HelpFormatter(argparse.HelpFormatter):
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convewma",
        description="ConvEWMA: learned exponential smoothing",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    data_help = "CSV (header = channel names, optional series_id and index columns), .npy or .npz; repeatable"
    index_help = (
        "CSV column of row labels (e.g. timestamps), not smoothed (default: the first column "
        "other than series_id if its header is empty, or if none of its cells is a number "
        "and another column holds data)"
    )

    train = commands.add_parser(
        "train", help="fit one smoothing factor per channel of the data", formatter_class=_HelpFormatter
    )
    train.add_argument("--data", action="append", required=True, metavar="FILE", help=data_help)
    train.add_argument("--index-col", default=None, metavar="NAME", help=index_help)
    train.add_argument(
        "--out", required=True, metavar="FILE", help="safetensors file to write, in an existing folder"
    )
    train.add_argument(
        "--kernel-size", type=_kernel_size, default=32, help=f"taps of the kernel, 1 to {MAX_KERNEL_SIZE}"
    )
    train.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="divide by the sum of the kernel (warm-up zeros)",
    )
    train.add_argument(
        "--warmup", choices=WARMUP_MODES, default="zeros", help="how the first steps are weighted"
    )
    train.add_argument("--epochs", type=int, default=300, help="full-batch Adam steps")
    train.add_argument("--lr", type=float, default=0.05, help="initial learning rate (cosine decay)")
    train.add_argument("--seed", type=int, default=0, help="random seed")

    smooth = commands.add_parser(
        "smooth",
        help="smooth every column of a file with every model channel",
        formatter_class=_HelpFormatter,
    )
    smooth.add_argument("--data", action="append", required=True, metavar="FILE", help=data_help)
    smooth.add_argument(
        "--index-col", default=None, metavar="NAME", help=index_help + "; copied to the output"
    )
    smooth.add_argument("--weights", default=str(DEFAULT_WEIGHTS), metavar="FILE", help="safetensors model")
    smooth.add_argument(
        "--warmup", choices=WARMUP_MODES, default=None, help="warm-up mode (default: the model's own)"
    )
    smooth.add_argument(
        "--out", default=None, metavar="FILE", help="CSV to write, in an existing folder (default: stdout)"
    )

    serve = commands.add_parser(
        "serve",
        help="start the HTTP service (settings: CONVEWMA_* variables)",
        formatter_class=_HelpFormatter,
    )
    serve.add_argument(
        "--host", default=None, help="listen address (default: $CONVEWMA_HOST, else 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=None, help="listen port (default: $CONVEWMA_PORT, else 8000)"
    )
    serve.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help=f"safetensors model (default: $CONVEWMA_WEIGHTS, else {DEFAULT_WEIGHTS})",
    )
    serve.add_argument(
        "--device",
        default=None,
        help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default: $CONVEWMA_DEVICE, else auto)",
    )
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
    handlers = {"train": _train, "smooth": _smooth, "serve": _serve}
    try:
        handlers[args.command](args, console)
    except BrokenPipeError:  # the reader of stdout stopped (`| head`): not an error
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except (CliError, DataError, WeightsError, ValueError, OSError) as exc:
        with contextlib.suppress(OSError):
            console.print(_one_line(args.command, exc), highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
