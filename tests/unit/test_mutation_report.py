"""tests/mutation_report.py: the score leaves equivalent and unchecked mutants out, and the
list of equivalent mutants names mutants the way mutmut does, each with its reason."""

from __future__ import annotations

import re

import pytest

from tests import mutation_report
from tests.mutation_report import table

ROW = "| `app.api.a` | "  # module column of each row below
NAME = re.compile(r"^app(\.\w+)+\.x(ǁ\w+ǁ)?\w+__mutmut_\d+$")


def test_each_listed_equivalent_is_a_mutant_name_with_a_reason():
    listed = mutation_report.equivalents()
    for name, reason in listed.items():
        assert NAME.match(name), name
        assert len(reason.split()) >= 4, f"{name}: say why it cannot change behaviour"


def results(module: str, **counts: int) -> dict[str, str]:
    statuses = [status.replace("_", " ") for status, n in counts.items() for _ in range(n)]
    return {f"{module}.x_f__mutmut_{i}": status for i, status in enumerate(statuses, 1)}


@pytest.mark.parametrize(
    ("counts", "equivalent", "row", "below"),
    [
        # 9 caught of 10: exactly the target.
        (
            {"killed": 8, "timeout": 1, "survived": 1},
            0,
            ROW + "10 | 9 | 1 | 0 | 0 | 0 | 90.0% |",
            False,
        ),
        # A survivor that is equivalent leaves the score: 8 of 9.
        ({"killed": 8, "survived": 2}, 1, ROW + "10 | 8 | 1 | 0 | 1 | 0 | 88.9% |", True),
        # "no tests" is a survivor; unchecked mutants mark the score and fail the target.
        ({"killed": 9, "no_tests": 1}, 0, ROW + "10 | 9 | 0 | 1 | 0 | 0 | 90.0% |", False),
        (
            {"killed": 9, "not_checked": 1},
            0,
            ROW + "10 | 9 | 0 | 0 | 0 | 1 | 100.0% (so far) |",
            True,
        ),
    ],
)
def test_the_score_is_caught_over_checked_minus_equivalent(counts, equivalent, row, below):
    found = results("app.api.a", **counts)
    survivors = [name for name, status in found.items() if status == "survived"]
    rows, under = table(found, {name: "why" for name in survivors[:equivalent]})
    assert rows[2] == row
    assert bool(under) is below


def test_modules_outside_the_service_are_scored_but_not_held_to_the_target():
    rows, under = table(results("app.core.a", killed=1, survived=9), {})
    assert rows[2] == "| `app.core.a` | 10 | 1 | 9 | 0 | 0 | 0 | 10.0% |"
    assert under == []
