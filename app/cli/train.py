"""``convewma train``: fit one smoothing factor per channel and write a weights file."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from app.cli.common import (
    DATA_HELP,
    INDEX_HELP,
    TIME_HELP,
    CliError,
    HelpFormatter,
    int_in_range,
    output_path,
    positive_seconds,
)
from app.core.ewma import MAX_KERNEL_SIZE, WARMUP_MODES, equivalents
from app.core.truncation import dropped_mass
from app.core.weights import MAX_DILATION, ModelCard, save_weights
from app.training.data import Dataset, load_dataset
from app.training.train import TrainConfig, TrainResult, fit, truncation_advice


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = commands.add_parser(
        "train", help="fit one smoothing factor per channel of the data", formatter_class=HelpFormatter
    )
    train.add_argument("--data", action="append", required=True, metavar="FILE", help=DATA_HELP)
    train.add_argument("--index-col", metavar="NAME", help=INDEX_HELP)
    train.add_argument(
        "--out", required=True, metavar="FILE", help="safetensors file to write, in an existing folder"
    )
    train.add_argument(
        "--kernel-size",
        type=int_in_range(1, MAX_KERNEL_SIZE),
        default=32,
        help=f"taps of the kernel, 1 to {MAX_KERNEL_SIZE}",
    )
    train.add_argument(
        "--dilation",
        type=int_in_range(1, MAX_DILATION),
        default=1,
        help="lag between taps: the kernel reaches (K-1)*dilation steps back, for long memory",
    )
    train.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="divide by the sum of the kernel (warm-up zeros)",
    )
    train.add_argument(
        "--warmup",
        choices=WARMUP_MODES,
        default="adjust",
        help="the model's warm-up when it smooths (training always scores from the adjusted start)",
    )
    train.add_argument("--time-col", metavar="NAME", help=TIME_HELP)
    train.add_argument(
        "--time-unit",
        type=positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="with --time-col: alpha is learnt per this many seconds (a model property)",
    )
    train.add_argument("--epochs", type=int, default=300, help="full-batch Adam steps")
    train.add_argument("--lr", type=float, default=0.05, help="initial learning rate (cosine decay)")
    train.add_argument("--seed", type=int, default=0, help="random seed")


def _created_at() -> str:
    # SOURCE_DATE_EPOCH (reproducible-builds.org) pins the timestamp so that a retrain
    # with the same inputs writes the same bytes.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return when.replace(microsecond=0).isoformat()


def _summary(
    result: TrainResult,
    channels: tuple[str, ...],
    config: TrainConfig,
    title: str,
    dropped: list[float] | None,
) -> Table:
    """The trained channels; with times (``dropped``: the largest share of weight the K taps
    drop on the data), the half-life in seconds instead of span and taps."""
    table = Table(title=title)
    table.add_column("channel")  # names to the left, numbers to the right
    columns: tuple[str, ...] = ("alpha", "span", "halflife", "truncated mass", "one-step MSE", "forecasts")
    if dropped is not None:
        columns = (f"alpha per {config.time_unit:g} s", "halflife (s)", "dropped mass (max)", *columns[-2:])
    for name in columns:
        table.add_column(name, justify="right")
    rows = zip(channels, result.model.alphas.tolist(), result.channel_losses, result.forecasts, strict=True)
    for index, (name, alpha, loss, forecasts) in enumerate(rows):
        # span and halflife count taps; with a dilation each tap is `dilation` steps.
        same = equivalents(alpha, config.kernel_size)
        if dropped is None:
            cells = [f"{same['span']:.4g}", f"{same['halflife']:.4g}", f"{same['truncated_mass']:.2e}"]
        else:
            cells = [f"{config.time_unit * same['halflife']:.4g}", f"{dropped[index]:.2e}"]
        table.add_row(name, f"{alpha:.6f}", *cells, f"{loss:.6g}", str(forecasts))
    return table


def _dropped(result: TrainResult, dataset: Dataset, config: TrainConfig) -> list[float] | None:
    """Per channel, the largest share of its weight the K taps drop on the data's times."""
    if not dataset.times:
        return None
    alphas = result.model.alphas.detach().numpy()
    worst = np.zeros(len(alphas))
    for stamps in dataset.times:
        shares = dropped_mass(stamps[None], alphas, config.kernel_size, config.dilation, config.time_unit)
        worst = np.maximum(worst, shares.max(axis=(1, 2)))
    return worst.tolist()


def run(args: argparse.Namespace, console: Console) -> None:
    """``convewma train``: read, fit, write, then print the table and any warning."""
    out = output_path(args.out)  # before the data is read and the fit runs
    config = TrainConfig(
        kernel_size=args.kernel_size,
        normalize=args.normalize,
        warmup=args.warmup,
        dilation=args.dilation,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        time_unit=args.time_unit,
    )
    paths = [Path(p) for p in args.data]
    dataset = load_dataset(paths, config.min_length, index_col=args.index_col, time_col=args.time_col)
    missing = (
        f", {dataset.missing_values} missing values left out of the loss" if dataset.missing_values else ""
    )
    console.print(
        f"training on {dataset.description}, channels {list(dataset.channels)}{missing}", highlight=False
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        transient=not console.is_terminal,
    ) as progress:
        task = progress.add_task("epoch", total=config.epochs, loss="-")
        result = fit(
            dataset, config, lambda epoch, loss: progress.update(task, advance=1, loss=f"{loss:.6g}")
        )
    card = ModelCard(
        channels=dataset.channels,
        kernel_size=config.kernel_size,
        normalize=config.normalize,
        warmup=config.warmup,
        eps=result.model.eps,
        dilation=config.dilation,
        time_unit=config.time_unit,
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
    dropped = _dropped(result, dataset, config)
    title = f"ConvEWMA weights written to {out}"
    console.print(_summary(result, dataset.channels, config, title, dropped))
    for index, (name, alpha) in enumerate(zip(dataset.channels, result.model.alphas.tolist(), strict=True)):
        advice = truncation_advice(
            alpha, config.kernel_size, config.dilation, None if dropped is None else dropped[index]
        )
        if advice is not None:
            console.print(Text.assemble(("warning:", "bold yellow"), f" channel {name!r}: {advice}"))
