"""Side by side: ``causal_fir`` of another version (a file path) against the current one.

Decisions about the FIR kernel are taken from this table, measured in one run:

    git show 3910c84~1:app/fir.py > /tmp/old_fir.py
    python benchmarks/compare_fir.py /tmp/old_fir.py

N = 1024 series x T = 4096, K = 32, float32, tuned allocator, best of 15 calls.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from types import ModuleType

import torch

from app.core import fir as current
from app.serving.runtime import tune_allocator


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("other_fir", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best(fn: Callable[[], object], repeats: int = 15) -> float:
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("other", help="path of the other version's fir.py")
    args = parser.parse_args()
    tune_allocator()
    other = load(args.other)
    x = torch.randn(1024, 4096, generator=torch.Generator().manual_seed(0))
    print("| C | kernel | other ms | current ms | current speed-up |\n|---|---|---:|---:|---:|")
    with torch.inference_mode():
        for channels in (1, 3):
            alphas = torch.linspace(0.1, 0.6, channels)[:, None]
            taps = alphas * (1 - alphas) ** torch.arange(32)
            taps = taps / taps.sum(dim=1, keepdim=True)
            for name, fold in (("32 taps", None), ("folded 16 + 16", (1 - alphas[:, 0]) ** 16)):
                before = best(lambda: other.causal_fir(x, taps, fold=fold))  # noqa: B023
                after = best(lambda: current.causal_fir(x, taps, fold=fold))  # noqa: B023
                times = f"{before * 1e3:.2f} | {after * 1e3:.2f}"
                print(f"| {channels} | {name} | {times} | {before / after:.2f}x |")


if __name__ == "__main__":
    main()
