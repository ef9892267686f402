from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from app.core.ewma import ConvEWMA
from app.core.paths import DEFAULT_WEIGHTS
from app.core.weights import ModelCard, WeightsError, load_weights, save_weights
from tests.reference import SHIPPED_WEIGHTS, read_weights_file

# float32 alphas against the float64 reference formula on the same logits: measured at
# most 6.7e-8 relative on the shipped model (under one float32 ulp); two ulps allowed.
ALPHA_RTOL = 2 * 2.0**-23

CARD = ModelCard(
    channels=("fast", "slow"),
    kernel_size=16,
    normalize=False,
    warmup="adjust",
    eps=1e-6,
    training_data="unit test",
    final_loss=0.25,
    created_at="2026-11-21T00:00:00+00:00",
)


@pytest.fixture
def model() -> ConvEWMA:
    return ConvEWMA(2, 16, normalize=False, warmup="adjust", alpha=[0.7, 0.1])


def good_metadata() -> dict[str, str]:
    return CARD.to_metadata()


def test_round_trip_restores_model_and_card(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_weights(model, CARD, path)
    loaded = load_weights(path)
    assert loaded.card == CARD
    torch.testing.assert_close(loaded.model.alphas, model.alphas.detach())
    assert (loaded.model.kernel_size, loaded.model.normalize, loaded.model.warmup) == (16, False, "adjust")
    assert not loaded.model.training
    assert len(loaded.sha256) == 64


def test_saving_is_byte_for_byte_reproducible(tmp_path, model):
    save_weights(model, CARD, tmp_path / "a.safetensors")
    save_weights(model, CARD, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_written_file_holds_the_logits_and_card(tmp_path, model):
    """Read back with safetensors alone: the stored logits give the model's alphas."""
    path = tmp_path / "m.safetensors"
    save_weights(model, CARD, path)
    stored = read_weights_file(path)
    assert stored.logits_dtype == "float32"
    np.testing.assert_array_equal(stored.logits, model.logits.detach().float().double().numpy())
    assert (stored.channels, stored.kernel_size, stored.normalize, stored.warmup, stored.eps) == (
        CARD.channels,
        CARD.kernel_size,
        CARD.normalize,
        CARD.warmup,
        CARD.eps,
    )
    np.testing.assert_allclose(stored.alphas, [0.7, 0.1], rtol=ALPHA_RTOL)


def test_shipped_default_model_loads_with_the_files_alphas():
    assert Path(DEFAULT_WEIGHTS).resolve() == SHIPPED_WEIGHTS
    loaded = load_weights(DEFAULT_WEIGHTS)
    stored = read_weights_file(SHIPPED_WEIGHTS)
    assert loaded.card.channels == stored.channels == ("infl", "realint", "tbilrate", "unemp")
    assert (loaded.model.kernel_size, loaded.model.normalize, loaded.model.warmup, loaded.model.eps) == (
        stored.kernel_size,
        stored.normalize,
        stored.warmup,
        stored.eps,
    )
    alphas = loaded.model.alphas.detach().double().numpy()
    np.testing.assert_allclose(alphas, stored.alphas, rtol=ALPHA_RTOL, atol=0)


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def with_meta(**changes: str | None) -> dict[str, str]:
    metadata = good_metadata()
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    return metadata


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"logits": torch.zeros(3)}, good_metadata(), "must be a float tensor of shape (2,)"),
        ({"logits": torch.zeros(2, 1)}, good_metadata(), "shape (2,)"),
        ({"logits": torch.zeros(2, dtype=torch.int32)}, good_metadata(), "float tensor"),
        ({"weights": torch.zeros(2)}, good_metadata(), "expected exactly the tensor 'logits'"),
        ({"logits": torch.zeros(2), "extra": torch.zeros(1)}, good_metadata(), "found ['extra', 'logits']"),
        ({"logits": torch.tensor([0.0, float("nan")])}, good_metadata(), "NaN or infinite"),
        ({"logits": torch.tensor([0.0, float("inf")])}, good_metadata(), "NaN or infinite"),
        ({"logits": torch.zeros(2)}, with_meta(kernel_size="33"), "kernel_size 33 outside [1, 32]"),
        ({"logits": torch.zeros(2)}, with_meta(kernel_size="x"), "malformed metadata"),
        ({"logits": torch.zeros(2)}, with_meta(format_version="2"), "unsupported format_version '2'"),
        ({"logits": torch.zeros(2)}, with_meta(format_version=None), "'format_version' is missing"),
        ({"logits": torch.zeros(2)}, with_meta(channels=None), "'channels' is missing"),
        ({"logits": torch.zeros(2)}, with_meta(channels='["a", "a"]'), "duplicate channel names"),
        ({"logits": torch.zeros(2)}, with_meta(channels="[]"), "non-empty JSON list"),
        ({"logits": torch.zeros(2)}, with_meta(warmup="ones"), "warmup 'ones' is not one of"),
        ({"logits": torch.zeros(2)}, with_meta(normalize="yes"), "malformed metadata"),
        ({"logits": torch.zeros(2)}, with_meta(normalize="1"), "'normalize' must be true or false"),
        ({"logits": torch.zeros(2)}, with_meta(eps="0.7"), "eps 0.7 outside"),
        ({"logits": torch.zeros(2)}, with_meta(dilation="0"), "dilation '0' is not an integer in [1, "),
        ({"logits": torch.zeros(2)}, with_meta(dilation="-2"), "dilation '-2' is not an integer"),
        ({"logits": torch.zeros(2)}, with_meta(dilation="1.5"), "dilation '1.5' is not an integer"),
        ({"logits": torch.zeros(2)}, with_meta(dilation=str(2**20 + 1)), "is not an integer in [1, 1048576]"),
        ({"logits": torch.zeros(2)}, with_meta(time_unit="0"), "time_unit '0' is not a number of secon"),
        ({"logits": torch.zeros(2)}, with_meta(time_unit="-1.0"), "time_unit '-1.0' is not a number of"),
        ({"logits": torch.zeros(2)}, with_meta(time_unit="inf"), "time_unit 'inf' is not a number of"),
        ({"logits": torch.zeros(2)}, with_meta(time_unit="nan"), "time_unit 'nan' is not a number of"),
        ({"logits": torch.zeros(2)}, with_meta(time_unit="1 s"), "malformed metadata"),
    ],
)
def test_invalid_files_are_refused_with_reason(tmp_path, tensors, metadata, message):
    path = write(tmp_path / "bad.safetensors", tensors, metadata)
    with pytest.raises(WeightsError) as info:
        load_weights(path)
    assert message in str(info.value)


def test_pickle_files_are_refused_without_unpickling(tmp_path, model):
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(WeightsError, match=r"pickle/torch\.save"):
        load_weights(path)
    legacy = tmp_path / "legacy.pt"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match=r"pickle/torch\.save"):
        load_weights(legacy)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too short"),
        (b"hello world, not weights", "bad header"),
        (struct.pack("<Q", 8) + b'{"a": 1}', "not a valid safetensors file"),
    ],
)
def test_garbage_is_refused(tmp_path, content, message):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        load_weights(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_weights(tmp_path / "nope.safetensors")


def test_header_is_canonical_json(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_weights(model, CARD, path)
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    assert length % 8 == 0
    header = json.loads(blob[8 : 8 + length])
    assert list(header) == sorted(header)
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])


def test_dilation_round_trips_and_old_files_load_undilated(tmp_path):
    layer = ConvEWMA(2, 8, dilation=5, alpha=[0.3, 0.6])
    card = ModelCard(channels=("a", "b"), kernel_size=8, normalize=True, warmup="zeros", eps=1e-6, dilation=5)
    save_weights(layer, card, tmp_path / "dilated.safetensors")
    loaded = load_weights(tmp_path / "dilated.safetensors")
    assert (loaded.card.dilation, loaded.model.dilation, loaded.model.receptive_field) == (5, 5, 36)
    assert read_weights_file(tmp_path / "dilated.safetensors").metadata["dilation"] == "5"
    old = good_metadata()
    del old["dilation"]  # as written before dilation existed
    path = write(tmp_path / "old.safetensors", {"logits": torch.zeros(2)}, old)
    assert load_weights(path).model.dilation == 1
    with pytest.raises(ValueError, match="the card says dilation 1, the model has 5"):
        save_weights(layer, CARD, tmp_path / "mismatch.safetensors")


def test_time_unit_round_trips_and_old_files_load_per_second(tmp_path):
    layer = ConvEWMA(2, 8, time_unit=60.0, alpha=[0.3, 0.6])
    card = ModelCard(("a", "b"), kernel_size=8, normalize=True, warmup="zeros", eps=1e-6, time_unit=60.0)
    save_weights(layer, card, tmp_path / "minutes.safetensors")
    loaded = load_weights(tmp_path / "minutes.safetensors")
    assert (loaded.card.time_unit, loaded.model.time_unit) == (60.0, 60.0)
    assert read_weights_file(tmp_path / "minutes.safetensors").metadata["time_unit"] == "60.0"
    old = good_metadata()
    assert "time_unit" not in old  # the default is not written: files as before times existed
    path = write(tmp_path / "old.safetensors", {"logits": torch.zeros(2)}, old)
    assert load_weights(path).model.time_unit == 1.0
    with pytest.raises(ValueError, match=r"the card says time_unit 1\.0, the model has 60\.0"):
        save_weights(layer, CARD, tmp_path / "mismatch.safetensors")
