"""models/README.md (the model card) against the committed weights file, read with
``safetensors`` alone: hash, configuration, training record and every printed alpha."""

from __future__ import annotations

import csv
import hashlib
import re
from datetime import UTC, datetime

import numpy as np
import pytest

from tests.reference import MODEL_CARD, REPO_ROOT, SHIPPED_WEIGHTS, pandas_equivalents, read_weights_file

CARD_TEXT = MODEL_CARD.read_text(encoding="utf-8")
WEIGHTS = read_weights_file(SHIPPED_WEIGHTS)


def table_rows(text: str) -> list[list[str]]:
    """Cells of every Markdown table row, backticks stripped (header and rule rows included)."""
    return [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


FIELDS = {row[0]: row[1] for row in table_rows(CARD_TEXT) if len(row) == 2}
# channel | alpha | span | halflife | one-step MSE | statsmodels SES alpha | description
CHANNEL_ROWS = [row for row in table_rows(CARD_TEXT) if len(row) == 7 and re.fullmatch(r"\d\.\d+", row[1])]


def documented_command() -> str:
    """The ``convewma train`` line of "Reproduce it"."""
    (command,) = re.findall(r"^SOURCE_DATE_EPOCH=\d+ convewma train .*$", CARD_TEXT, flags=re.MULTILINE)
    return command


def test_the_card_names_every_channel_in_file_order():
    assert [row[0] for row in CHANNEL_ROWS] == list(WEIGHTS.channels)


def test_printed_alphas_are_the_files_logits_through_the_reference_formula():
    printed = [row[1] for row in CHANNEL_ROWS]
    card = np.array([float(p) for p in printed])
    # Half a unit in the last printed digit, plus one float32 ulp of the value: the logits
    # are stored as float32, the card was printed from the float64 fit.
    decimals = np.array([len(p.split(".")[1]) for p in printed])
    tolerance = 0.5 * 10.0**-decimals + np.spacing(card.astype(np.float32)).astype(np.float64)
    error = np.abs(card - WEIGHTS.alphas)
    assert np.all(error <= tolerance), f"|card - file| = {error}, tolerance {tolerance}"


def half_unit(printed: str) -> float:
    """Half a unit in the last printed digit."""
    return 0.5 * 10.0 ** -len(printed.split(".")[1])


@pytest.mark.parametrize(("column", "key"), [(2, "span"), (3, "halflife")])
def test_printed_pandas_equivalents_are_the_files(column, key):
    for row, alpha in zip(CHANNEL_ROWS, WEIGHTS.alphas, strict=True):
        expected = pandas_equivalents(float(alpha), WEIGHTS.kernel_size)[key]
        assert abs(float(row[column]) - expected) <= half_unit(row[column]), (row[0], key)


def test_truncated_mass_bound_is_true():
    (bound,) = re.findall(r"below (\de-\d+)\s+here", CARD_TEXT)
    dropped = [pandas_equivalents(float(a), WEIGHTS.kernel_size)["truncated_mass"] for a in WEIGHTS.alphas]
    assert float(bound) / 10 < max(dropped) < float(bound)


def test_printed_statsmodels_alphas_are_statsmodels():
    from statsmodels.tsa.holtwinters import SimpleExpSmoothing

    with (REPO_ROOT / "models" / "data" / "macrodata.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in CHANNEL_ROWS:
        x = np.array([float(r[row[0]]) for r in rows])
        fitted = SimpleExpSmoothing(x, initialization_method="estimated").fit().params["smoothing_level"]
        assert abs(float(row[5]) - fitted) <= half_unit(row[5]), row[0]


def test_sha256_is_the_committed_files():
    assert FIELDS["sha256"] == hashlib.sha256(SHIPPED_WEIGHTS.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("kernel_size", str(WEIGHTS.kernel_size)),
        ("dilation", WEIGHTS.metadata["dilation"]),
        ("normalize", "true" if WEIGHTS.normalize else "false"),
        ("warmup", WEIGHTS.warmup),
        ("eps", WEIGHTS.metadata["eps"]),
        ("created_at", WEIGHTS.metadata["created_at"]),
    ],
)
def test_configuration_fields_match_the_file_metadata(field, expected):
    value = FIELDS[field].split(" (")[0]  # created_at carries a remark in brackets
    if field == "eps":
        assert float(value) == float(expected)
    else:
        assert value == expected


def test_file_field_describes_the_tensor():
    described = FIELDS["file"].replace("`", "")
    assert described.startswith(str(SHIPPED_WEIGHTS.relative_to(REPO_ROOT)))
    assert f"format version {WEIGHTS.metadata['format_version']}" in described
    assert f"one {WEIGHTS.logits_dtype} tensor logits of shape ({len(WEIGHTS.channels)},)" in described


def test_training_record_matches_the_metadata():
    training = FIELDS["training"]
    assert f"lr {WEIGHTS.metadata['lr']}" in training
    assert f"{WEIGHTS.metadata['epochs']} full-batch epochs" in training
    assert f"seed {WEIGHTS.metadata['seed']}" in training
    printed_loss = FIELDS["final loss"].split()[0]
    decimals = len(printed_loss.split(".")[1])
    assert abs(float(printed_loss) - float(WEIGHTS.metadata["final_loss"])) <= 0.5 * 10.0**-decimals


def test_reproduce_command_pins_the_recorded_timestamp_and_data():
    command = documented_command()
    epoch = int(command.split()[0].split("=")[1])
    assert datetime.fromtimestamp(epoch, UTC).isoformat() == WEIGHTS.metadata["created_at"]
    data = REPO_ROOT / command.split("--data ")[1].split()[0]
    with data.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == WEIGHTS.channels
    assert f"{len(rows) - 1} rows" in CARD_TEXT
    assert WEIGHTS.metadata["training_data"] == f"{data.name} (1 series, {len(rows) - 1} steps)"
