"""``convewma smooth --url URL``: the same columns smoothed by a running service through
``app.client``, so a file is smoothed remotely as it is locally."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from app.cli.common import CliError
from app.client import ConvEWMAClient, ConvEWMAError

SmoothSeries = Callable[[np.ndarray, "list[int | None]", "np.ndarray | None"], np.ndarray]


def channels_of(client: ConvEWMAClient) -> tuple[str, ...]:
    try:
        return client.limits().channels
    except ConvEWMAError as error:
        raise CliError(f"--url {client.base_url}: {error.reason}") from None


def remote_series(client: ConvEWMAClient, args: argparse.Namespace) -> SmoothSeries:
    """``smooth_series`` through the service: (S, T) columns to (ceil(T / stride), width)."""
    options = {
        "warmup": args.warmup,
        "gaps": args.gaps,
        "min_periods": args.min_periods,
        "stride": args.stride,
        "dtype": args.dtype,
        "max_gap": args.max_gap,
    }
    channels = channels_of(client)

    def smooth(values: np.ndarray, pairs: list[int | None], times: np.ndarray | None) -> np.ndarray:
        bank = [j for j, channel in enumerate(pairs) if channel is None]
        own = [j for j, channel in enumerate(pairs) if channel is not None]
        blocks: dict[int, np.ndarray] = {}
        try:
            if bank:
                banked = client.smooth(values[bank], pairing="bank", times=times, **options)
                blocks.update((j, banked[i]) for i, j in enumerate(bank))
            if own:
                names = [channels[pairs[j]] for j in own]  # type: ignore[index]
                paired = client.smooth(values[own], pairing="each", channels=names, times=times, **options)
                blocks.update((j, paired[i]) for i, j in enumerate(own))
        except ConvEWMAError as error:
            raise CliError(f"--url {client.base_url}: {error.reason}") from None
        return np.concatenate([blocks[j] for j in range(len(pairs))]).T

    return smooth
