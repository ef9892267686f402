"""The Open Inference Protocol route through NVIDIA's own client, ``tritonclient[http]``, sync
and aio, against ``convewma serve``'s uvicorn configuration on 127.0.0.1: metadata and
readiness, binary and JSON tensors, ragged rows, float64, gaps, history, times, output
selection and compressed bodies, every result against the float64 reference."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.api.test_real_world import ALPHAS, SHIPPED, assert_close, expected, with_gaps
from tests.api.test_times import expected as expected_times
from tests.servers import thread_server

MODEL = "convewma"
TOLERANCE = {"FP32": 1e-5, "FP64": 1e-12}
ALL = list(range(len(ALPHAS)))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with thread_server(max_wait_ms=2.0) as (host, port):
        yield f"{host}:{port}"


@pytest.fixture
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server) as client:
        yield client


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def outputs(*names: str, binary: bool = True) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def test_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("other")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert {t["name"]: t["datatype"] for t in metadata["inputs"]}["INPUT"] == "FP32"
    assert {t["name"]: t["shape"] for t in metadata["outputs"]}["SMOOTHED"] == [-1, -1, -1]
    version = metadata["versions"][0]
    assert client.is_model_ready(MODEL, model_version=version)
    assert not client.is_model_ready(MODEL, model_version="7")
    assert client.get_model_metadata(MODEL, model_version=version)["versions"] == [version]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_binary_and_json_tensors_match_the_reference(client, binary, compression) -> None:
    rng = np.random.default_rng(1)
    values = np.stack([with_gaps(rng, 150) for _ in range(5)]).astype(np.float32)
    result = client.infer(
        MODEL,
        [tensor("INPUT", values, "FP32", binary)],
        outputs=outputs("SMOOTHED", "ALPHAS", binary=binary),
        request_compression_algorithm=compression,
    )
    smoothed = result.as_numpy("SMOOTHED")
    assert smoothed.dtype == np.float32
    assert smoothed.shape == (5, len(ALPHAS), 150)
    np.testing.assert_allclose(result.as_numpy("ALPHAS"), ALPHAS, rtol=1e-12)
    assert result.get_response()["parameters"]["channels"] == ",".join(SHIPPED.channels)
    for row, got in zip(values, smoothed, strict=True):
        assert_close(got.astype(np.float64), expected(row.astype(np.float64), ALL), TOLERANCE["FP32"])


def test_ragged_float64_rows_with_options(client) -> None:
    rng = np.random.default_rng(2)
    lengths = np.array([40, 1, 97, 64], np.int64)
    values = np.full((4, 97), np.nan)
    rows = [with_gaps(rng, n, missing=0.3) for n in lengths]
    for index, row in enumerate(rows):
        values[index, : len(row)] = row
    values[0, 40:] = np.inf  # padding after a row's end is never read
    parameters = {"channels": "3,0", "gaps": "skip", "min_periods": 2, "stride": 3, "warmup": "zeros"}
    result = client.infer(
        MODEL,
        [tensor("INPUT", values, "FP64"), tensor("LENGTHS", lengths, "INT64")],
        outputs=outputs("SMOOTHED", "SMOOTHED_LENGTHS"),
        parameters=parameters,
    )
    smoothed = result.as_numpy("SMOOTHED")
    assert smoothed.dtype == np.float64
    counts = result.as_numpy("SMOOTHED_LENGTHS")
    np.testing.assert_array_equal(counts, -(-lengths // 3))
    assert smoothed.shape == (4, 2, counts.max())
    options = {"gaps": "skip", "min_periods": 2, "stride": 3, "warmup": "zeros"}
    for row, got, count in zip(rows, smoothed, counts, strict=True):
        assert_close(got[:, :count], expected(row, [3, 0], **options), TOLERANCE["FP64"])
        assert np.isnan(got[:, count:]).all()


def test_history_in_chunks_equals_one_request(client) -> None:
    rng = np.random.default_rng(3)
    full = np.stack([with_gaps(rng, 300) for _ in range(3)]).astype(np.float32)
    history = np.zeros((3, 0), np.float32)
    lengths = np.zeros(3, np.int64)
    pieces = []
    for start in range(0, 300, 70):
        chunk = full[:, start : start + 70]
        result = client.infer(
            MODEL,
            [
                tensor("INPUT", chunk, "FP32"),
                tensor("HISTORY", history, "FP32"),
                tensor("HISTORY_LENGTHS", lengths, "INT64"),
            ],
        )
        pieces.append(result.as_numpy("SMOOTHED"))
        history, lengths = result.as_numpy("HISTORY"), result.as_numpy("HISTORY_LENGTHS")
        assert history.shape[1] == lengths.max()
    smoothed = np.concatenate(pieces, axis=2)
    for row, got in zip(full, smoothed, strict=True):
        assert_close(got.astype(np.float64), expected(row.astype(np.float64), ALL), TOLERANCE["FP32"])


def test_times_with_history_times_and_max_gap(client) -> None:
    rng = np.random.default_rng(4)
    values = np.stack([with_gaps(rng, 80) for _ in range(2)])
    times = 1.7e9 + np.cumsum(rng.exponential(1.0, (2, 80)) + 1e-3, axis=1)
    history, history_times = np.zeros((2, 0)), np.zeros((2, 0))
    lengths = np.zeros(2, np.int64)
    pieces = []
    for start in (0, 30):
        stop = start + (30 if start == 0 else 50)
        result = client.infer(
            MODEL,
            [
                tensor("INPUT", values[:, start:stop], "FP64"),
                tensor("TIMES", times[:, start:stop], "FP64"),
                tensor("HISTORY", history, "FP64"),
                tensor("HISTORY_LENGTHS", lengths, "INT64"),
                tensor("HISTORY_TIMES", history_times, "FP64"),
            ],
            parameters={"max_gap": 3.5},
        )
        pieces.append(result.as_numpy("SMOOTHED"))
        history, lengths = result.as_numpy("HISTORY"), result.as_numpy("HISTORY_LENGTHS")
        history_times = result.as_numpy("HISTORY_TIMES")
    smoothed = np.concatenate(pieces, axis=2)
    for row, stamps, got in zip(values, times, smoothed, strict=True):
        assert_close(got, expected_times(row, stamps, ALL, max_gap=3.5), TOLERANCE["FP64"])


def test_output_selection_and_pairing_each(client) -> None:
    values = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 6.0]], np.float32)
    result = client.infer(
        MODEL,
        [tensor("INPUT", values, "FP32")],
        outputs=[triton.InferRequestedOutput("ALPHAS", binary_data=False)],
        parameters={"pairing": "each", "channels": f"{SHIPPED.channels[1]},2"},
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["ALPHAS"]
    assert result.as_numpy("SMOOTHED") is None
    np.testing.assert_allclose(result.as_numpy("ALPHAS"), ALPHAS[[1, 2]], rtol=1e-12)


@pytest.mark.parametrize(
    ("inputs", "parameters", "message"),
    [
        (
            [("INPUT", np.zeros((2, 3), np.int32), "INT32")],
            {},
            "input INPUT has datatype 'INT32'",
        ),
        ([("INPUT", np.zeros((2, 3), np.float32), "FP32")], {"span": 3}, "unknown parameter(s) ['span']"),
        (
            [("INPUT", np.zeros((2, 3), np.float32), "FP32"), ("LENGTHS", np.array([3, 4]), "INT64")],
            {},
            "LENGTHS[1] = 4 is not in 1..3",
        ),
        ([("INPUT", np.array([[1.0, np.inf]]), "FP64")], {}, "INPUT[0, 1] = inf is not a finite float64"),
        ([("INPUT", np.zeros((1, 3), np.float32), "FP32")], {"max_gap": 2.0}, "max_gap needs input TIMES"),
    ],
)
def test_errors_reach_the_client_with_their_reason(client, inputs, parameters, message) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [tensor(*item) for item in inputs], parameters=parameters)
    assert raised.value.status() == "400"
    assert message in raised.value.message()


def test_an_unknown_version_is_not_found(client) -> None:
    values = np.zeros((1, 2), np.float32)
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [tensor("INPUT", values, "FP32")], model_version="3")
    assert raised.value.status() == "404"
    version = client.get_model_metadata(MODEL)["versions"][0]
    result = client.infer(MODEL, [tensor("INPUT", values, "FP32")], model_version=version)
    assert result.get_response()["model_version"] == version


def test_aio_client_concurrent_requests(server: str) -> None:
    rng = np.random.default_rng(5)
    batches = [np.stack([with_gaps(rng, int(n)) for _ in range(3)]) for n in rng.integers(5, 200, 16)]

    async def run() -> list[np.ndarray]:
        async with triton_aio.InferenceServerClient(server) as client:
            assert await client.is_model_ready(MODEL)
            results = await asyncio.gather(
                *(client.infer(MODEL, [tensor("INPUT", values, "FP64")]) for values in batches)
            )
        return [result.as_numpy("SMOOTHED") for result in results]

    for values, smoothed in zip(batches, asyncio.run(run()), strict=True):
        for row, got in zip(values, smoothed, strict=True):
            assert_close(got, expected(row, ALL), TOLERANCE["FP64"])
