"""Mutation score per module, from the results of ``mutmut run`` (tests/README.md).

    python -m tests.mutation_report            # print the table
    python -m tests.mutation_report --write    # and put it into tests/README.md

A mutant counts as caught when a test failed on it or it hung past mutmut's timeout; the
score is caught / (checked - equivalent), and a module with unchecked mutants is marked. The
mutants listed in ``tests/equivalent_mutants.toml`` cannot change behaviour (each with its
reason); they are left out of the score and shown in their own column. "no tests" means no
in-process test reached the function: it counts as a survivor.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "tests" / "README.md"
EQUIVALENT = ROOT / "tests" / "equivalent_mutants.toml"
BEGIN, END = "<!-- mutation-scores: begin -->", "<!-- mutation-scores: end -->"
CAUGHT = {"killed", "timeout"}
# The service: every module of the API, the serving internals, the CLI and the app factory.
SERVICE = ("app.api.", "app.serving.", "app.cli.", "app.main")
TARGET = 0.90


def read_results() -> dict[str, str]:
    """``{mutant name: status}`` from ``mutmut results --all true``."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    results: dict[str, str] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            results[name] = status
    return results


def equivalents() -> dict[str, str]:
    if not EQUIVALENT.exists():
        return {}
    table = tomllib.loads(EQUIVALENT.read_text())
    return {name: str(reason) for name, reason in table.get("equivalent", {}).items()}


def table(results: dict[str, str], equivalent: dict[str, str]) -> tuple[list[str], list[str]]:
    """Markdown rows per module, and the service modules below the target."""
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in results.items():
        module = name.rpartition(".")[0]
        by_module[module]["equivalent" if name in equivalent else status] += 1
    rows = [
        "| module | mutants | caught | survived | no tests | equivalent | not checked | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    below = []
    totals: Counter[str] = Counter()
    for module in sorted(by_module):
        counts = by_module[module]
        totals.update(counts)
        row, score = row_of(f"`{module}`", counts)
        rows.append(row)
        if module.startswith(SERVICE) and score < TARGET:
            below.append(f"{module}: {score:.1%}")
    rows.append(row_of("**all of app/**", totals)[0])
    return rows, below


def row_of(label: str, counts: Counter[str]) -> tuple[str, float]:
    total = sum(counts.values())
    caught = sum(counts[s] for s in CAUGHT)
    unchecked = counts["not checked"]
    scored = total - counts["equivalent"] - unchecked
    score = caught / scored if scored else 0.0
    other = total - caught - counts["survived"] - counts["no tests"] - counts["equivalent"] - unchecked
    survived = counts["survived"] + other  # suspicious or segfault: not caught either
    shown = f"{score:.1%}" if scored else "-"
    if unchecked:
        shown += " (so far)"
    row = (
        f"| {label} | {total} | {caught} | {survived} | {counts['no tests']} | "
        f"{counts['equivalent']} | {unchecked} | {shown} |"
    )
    return row, score if not unchecked else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in tests/README.md")
    args = parser.parse_args()
    results = read_results()
    equivalent = equivalents()
    stale = sorted(set(equivalent) - set(results))
    if stale:
        print("listed as equivalent but not a mutant of this source:", *stale, sep="\n  ")
        return 1
    # A test that catches a listed mutant proves it was not equivalent: drop it from the list.
    caught = sorted(name for name in equivalent if results[name] in CAUGHT)
    if caught:
        print("listed as equivalent but a test catches it:", *caught, sep="\n  ")
        return 1
    rows, below = table(results, equivalent)
    print("\n".join(rows))
    if args.write:
        text = README.read_text()
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        README.write_text(head + BEGIN + "\n" + "\n".join(rows) + "\n" + END + tail)
    if below:
        print(f"service modules below {TARGET:.0%}:", *below, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
