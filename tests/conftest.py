"""Under a mutation run, the tests that reach a mutant run fastest first.

mutmut runs the tests linked to a mutant with ``-x`` and passes them in no useful order,
so a mutant that a 10 ms unit test catches could first wait for a minute of API tests.
mutmut runs the tests in ``mutants/``, next to its ``mutmut-stats.json``, which holds the
duration of each test: sorting by it changes no verdict, only how soon a caught mutant
stops. Outside a mutation run (no stats file in the working directory) this does nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

STATS = Path("mutmut-stats.json")
# Read once, at import: mutmut forks each mutant's run from a process that imported this.
DURATIONS: dict[str, float] = json.loads(STATS.read_text())["duration_by_test"] if STATS.exists() else {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if DURATIONS and "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", ""):
        items.sort(key=lambda item: DURATIONS.get(item.nodeid, 0.0))
