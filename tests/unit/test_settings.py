from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from app.core.paths import DEFAULT_WEIGHTS
from app.serving.settings import Settings


def test_defaults_point_at_the_shipped_model(monkeypatch):
    for name in [n for n in os.environ if n.startswith("CONVEWMA_")]:
        monkeypatch.delenv(name)
    settings = Settings()
    assert settings.weights == DEFAULT_WEIGHTS
    assert settings.device == "auto"
    assert settings.max_wait_ms == 0.0


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("CONVEWMA_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("CONVEWMA_DEVICE", "cpu")
    monkeypatch.setenv("CONVEWMA_REQUEST_TIMEOUT_S", "2.5")
    settings = Settings()
    assert (settings.max_batch_size, settings.device, settings.request_timeout_s) == (8, "cpu", 2.5)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CONVEWMA_MAX_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("CONVEWMA_MAX_WAIT_MS", "-1", "greater than or equal to 0"),
        ("CONVEWMA_PORT", "70000", "less than or equal to 65535"),
        ("CONVEWMA_DEVICE", "tpu", "device must be 'auto', 'cpu' or 'cuda[:N]'"),
        ("CONVEWMA_MAX_LENGTH", "5000000", "must not exceed max_batch_values"),
        ("CONVEWMA_REQUEST_TIMEOUT_S", "abc", "valid number"),
    ],
)
def test_invalid_settings_fail_with_a_clear_message(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert message in str(info.value)
