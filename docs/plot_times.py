"""The plot in README.md's "Irregular timestamps: times or steps": docs/times.png.

A simulated temperature sensor that reports at random (Poisson) times, about every 10 s;
it reports every 2 s for two minutes while a door is open (it reports on change), and not
at all for about three minutes, during which the heating comes on. The same layer smooths
it by steps (no ``times``) and by time (``times=...``, ``time_unit`` = the usual 10 s
interval, so both use the same alpha and agree on an even 10 s grid), and by time with
``max_gap``. Deterministic (a fixed seed; float64 throughout):

    pip install -c constraints.txt -e ".[docs]"
    python docs/plot_times.py            # writes docs/times.png
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python docs/plot_times.py` from anywhere, without PYTHONPATH
    sys.path.insert(0, str(ROOT))

from app import ConvEWMA  # noqa: E402

SEED = 12
INTERVAL_S = 10.0  # the sensor's usual reporting interval: the time_unit
ALPHA = 0.2  # per step, and per 10 s by time
MAX_GAP_S = 60.0
DOOR_S = 540.0  # a door opens: a dip of 2 degrees, over in about a minute
BURST = (540.0, 660.0, 2.0)  # start, end, seconds between reports (the sensor reports on change)
OUTAGE = (960.0, 1110.0)  # no report at all
END_S = 1800.0
HEATING_ON_S = 990.0  # during the outage the level rises by 2.5 degrees


def true_level(t: np.ndarray) -> np.ndarray:
    """The noise-free temperature: a slow drift, a dip when a door opens, and the heating
    coming on during the outage."""
    level = 20.0 + 0.4 * np.sin(2.0 * np.pi * t / 1500.0)
    since = np.clip(t - DOOR_S, 0.0, None) / 12.0
    level = level - 2.0 * since * np.exp(1.0 - since)
    return level + 2.5 * (1.0 - np.exp(-np.clip(t - HEATING_ON_S, 0.0, None) / 40.0))


def sensor(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Report times (strictly increasing seconds) and noisy readings."""
    rng = np.random.default_rng(seed)
    times: list[float] = []
    t = 0.0
    while t < END_S:
        times.append(t)
        if BURST[0] <= t < BURST[1]:
            t += BURST[2]
        else:
            t += float(rng.exponential(INTERVAL_S))
            if BURST[0] - INTERVAL_S < t < BURST[0]:
                t = BURST[0]
        if OUTAGE[0] <= t < OUTAGE[1]:
            t = OUTAGE[1] + float(rng.exponential(INTERVAL_S))
    tau = np.asarray(times)
    return tau, true_level(tau) + rng.normal(0.0, 0.35, tau.shape[0])


def smoothed(tau: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    layer = ConvEWMA(channels=1, kernel_size=32, warmup="adjust", time_unit=INTERVAL_S, alpha=ALPHA)
    x = torch.from_numpy(values)[None]  # (1, T) float64
    times = torch.from_numpy(tau)[None]
    with torch.no_grad():
        return {
            "steps": layer(x)[0, 0].numpy(),
            "times": layer(x, times=times)[0, 0].numpy(),
            "max_gap": layer(x, times=times, max_gap=MAX_GAP_S)[0, 0].numpy(),
        }


def broken(tau: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A line with a break across the outage (no output exists there)."""
    cut = int(np.searchsorted(tau, OUTAGE[1]))
    return np.insert(tau, cut, np.nan), np.insert(y, cut, np.nan)


def silence(tau: np.ndarray) -> tuple[float, float]:
    """The last report before the outage and the first after it."""
    cut = int(np.searchsorted(tau, OUTAGE[1]))
    return float(tau[cut - 1]), float(tau[cut])


def plot(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    matplotlib.rcParams.update({"font.size": 9})
    tau, values = sensor()
    ys = smoothed(tau, values)
    quiet = silence(tau)
    minutes = (quiet[1] - quiet[0]) / 60
    halflife = INTERVAL_S * math.log(0.5) / math.log1p(-ALPHA)
    styles = {
        "steps": ("tab:red", f"by steps: alpha {ALPHA} per report"),
        "times": ("tab:blue", f"by time: alpha {ALPHA} per 10 s (half-life {halflife:.0f} s)"),
        "max_gap": ("tab:green", f"by time, max_gap={MAX_GAP_S:.0f} s"),
    }
    figure = plt.figure(figsize=(12, 6), dpi=100)
    grid = figure.add_gridspec(2, 2, left=0.06, right=0.99, top=0.94, bottom=0.16, hspace=0.38, wspace=0.1)
    whole = figure.add_subplot(grid[0, :])
    zooms = (figure.add_subplot(grid[1, 0]), figure.add_subplot(grid[1, 1]))
    windows = ((BURST[0] - 120.0, BURST[1] + 180.0), (OUTAGE[0] - 120.0, OUTAGE[1] + 240.0))
    fine = np.linspace(0.0, tau[-1], 1200)
    for axes, window in ((whole, (0.0, END_S)), *zip(zooms, windows, strict=True)):
        axes.axvspan(BURST[0] / 60, BURST[1] / 60, color="0.92", lw=0)
        axes.axvspan(quiet[0] / 60, quiet[1] / 60, color="#fde8d0", lw=0)
        axes.plot(fine / 60, true_level(fine), color="0.5", lw=1, ls="--", label="true level")
        axes.plot(tau / 60, values, ".", color="0.3", ms=3 if axes is whole else 4, label="reports (raw)")
        for name, (color, label) in styles.items():
            if name == "max_gap" and axes is not zooms[1]:
                continue
            t, y = broken(tau, ys[name])
            axes.plot(t / 60, y, color=color, lw=1.5, label=label, drawstyle="steps-post")
        axes.set_xlim(window[0] / 60, window[1] / 60)
        axes.grid(alpha=0.3, lw=0.5)
    whole.set_ylim(17.9, 23.6)
    for at, text in (
        (BURST[0], f"a door opens: a report every {BURST[2]:.0f} s"),
        (quiet[0], f"outage: no report for {minutes:.0f} min, the heating comes on"),
    ):
        whole.text(at / 60 + 0.1, 23.45, text, va="top", fontsize=8)
    whole.set_title(
        "A sensor reporting about every 10 s at random times, smoothed by the same ConvEWMA layer (K = 32)"
    )
    zooms[0].set_title(
        f"Burst: by steps the half-life shrinks to {halflife * BURST[2] / INTERVAL_S:.0f} s; "
        f"by time it stays {halflife:.0f} s",
        fontsize=9,
    )
    zooms[1].set_title(
        f"After the outage: by steps, {minutes:.0f} silent minutes count as one report", fontsize=9
    )
    zooms[0].set_ylim(17.6, 21.2)
    zooms[1].set_ylim(19.0, 23.2)
    for axes in (whole, zooms[0]):
        axes.set_ylabel("temperature")
    for axes in zooms:
        axes.set_xlabel("minutes")
    handles, labels = zooms[1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=5, fontsize=9, frameon=False)
    # A 256-colour palette: the same picture at a third of the size of a full-colour PNG.
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "times.png", help="the PNG to write")
    args = parser.parse_args(argv)
    plot(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
