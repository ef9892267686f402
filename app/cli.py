"""The ``convewma`` command line: ``train`` fits weights, ``smooth`` applies them to a file."""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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


def _train(args: argparse.Namespace, console: Console) -> None:
    config = TrainConfig(
        kernel_size=args.kernel_size,
        normalize=args.normalize,
        warmup=args.warmup,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
    )
    dataset = load_dataset([Path(p) for p in args.data], config.min_length)
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(result.model, card, out)
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
    loaded = load_weights(args.weights)
    card = loaded.card
    dataset = load_dataset([Path(p) for p in args.data], min_length=1)
    rows: list[list[str]] = []
    header: list[str] = []
    with torch.inference_mode():
        for index, values in enumerate(dataset.series):
            x = torch.from_numpy(values).to(torch.float32)  # (S, T): each input column a series
            y = loaded.model(x, warmup=args.warmup)  # (S, C, T)
            header = [f"{src}:{ch}" for src in dataset.channels for ch in card.channels]
            flat = y.reshape(-1, y.shape[-1]).t().tolist()
            rows.extend([[str(index), *(f"{v:.7g}" for v in row)] for row in flat])
    alphas = ", ".join(
        f"{n}={a:.4f}" for n, a in zip(card.channels, loaded.model.alphas.tolist(), strict=True)
    )
    console.print(f"model {loaded.path} (sha256 {loaded.sha256[:12]}), alphas: {alphas}", highlight=False)
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(open(args.out, "w", newline="")) if args.out else sys.stdout
        writer = csv.writer(target)
        writer.writerow(["series", *header])
        writer.writerows(rows)


def _serve(args: argparse.Namespace, console: Console) -> None:
    import logging
    import math

    import uvicorn
    from pydantic import ValidationError

    from app.drain import DrainingServer, DrainState
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
    load_weights(settings.weights)  # fail fast, in one line, before uvicorn starts
    drain = DrainState()
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["convewma"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config = uvicorn.Config(
        create_app(settings, drain=drain),
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
    DrainingServer(config, drain, settings.drain_s).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convewma", description="ConvEWMA: learned exponential smoothing")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fit one smoothing factor per channel of the data")
    train.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FILE",
        help="CSV (header = channel names, optional series_id column), .npy or .npz; repeatable",
    )
    train.add_argument("--out", required=True, metavar="FILE", help="safetensors file to write")
    train.add_argument("--kernel-size", type=_kernel_size, default=32)
    train.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True)
    train.add_argument("--warmup", choices=WARMUP_MODES, default="zeros")
    train.add_argument("--epochs", type=int, default=300)
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--seed", type=int, default=0)

    smooth = commands.add_parser("smooth", help="smooth every column of a file with every model channel")
    smooth.add_argument("--data", action="append", required=True, metavar="FILE")
    smooth.add_argument("--weights", default=str(DEFAULT_WEIGHTS), metavar="FILE")
    smooth.add_argument("--warmup", choices=WARMUP_MODES, default=None)
    smooth.add_argument("--out", default=None, metavar="FILE", help="CSV to write (default: stdout)")

    serve = commands.add_parser("serve", help="start the HTTP service (settings: CONVEWMA_* variables)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--weights", default=None, metavar="FILE")
    serve.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    handlers = {"train": _train, "smooth": _smooth, "serve": _serve}
    try:
        handlers[args.command](args, console)
    except (CliError, DataError, WeightsError, ValueError, OSError) as exc:
        console.print(f"[bold red]convewma {args.command}: error:[/] {exc}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
