"""The Open Inference Protocol route spoken from the specifications over plain httpx, through
the real app and its lifespan: requests are built byte by byte as the KServe v2 REST
protocol and Triton's binary tensor extension describe them (a JSON header of
``Inference-Header-Content-Length`` bytes, then little-endian row-major tensors), and
responses are taken apart the same way, never with the server's code. Answers are checked
against the float64 reference; every refusal for its status, its ``{"error": ...}`` body
and the tensor or field it names."""

from __future__ import annotations

import asyncio
import gzip
import importlib.metadata
import json
import math
from typing import Any

import numpy as np
import orjson
import pytest

from tests.api.test_contract import MAX_BODY_BYTES, MODEL_VERSION, post, scrape, serving
from tests.api.test_real_world import ALL, ALPHAS, SHIPPED, assert_close, expected, with_gaps

pytestmark = pytest.mark.anyio
INFER = "/v2/models/convewma/infer"
LITTLE = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def binary_request(
    inputs: list[tuple[str, np.ndarray, str]], parameters: dict[str, Any] | None = None, **header: Any
) -> tuple[bytes, dict[str, str]]:
    """An infer body with every input in binary, and its headers, as the extension specifies."""
    document: dict[str, Any] = {"inputs": [], **header}
    if parameters:
        document["parameters"] = parameters
    blobs = []
    for name, array, datatype in inputs:
        blob = np.ascontiguousarray(array, LITTLE[datatype]).tobytes()
        document["inputs"].append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    head = json.dumps(document).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


def read_response(content: bytes, headers: Any) -> dict[str, np.ndarray | None]:
    """Every output of an infer response by name (binary or JSON data), as the extension says."""
    length = headers.get("inference-header-content-length")
    head = json.loads(content if length is None else content[: int(length)])
    offset = len(content) if length is None else int(length)
    tensors: dict[str, np.ndarray | None] = {}
    for output in head["outputs"]:
        dtype, shape = np.dtype(LITTLE[output["datatype"]]), output["shape"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            data = [math.nan if v is None else v for v in output["data"]]
            tensors[output["name"]] = np.array(data, dtype).reshape(shape)
        else:
            assert size == math.prod(shape) * dtype.itemsize
            tensors[output["name"]] = np.frombuffer(content, dtype, math.prod(shape), offset).reshape(shape)
            offset += size
    assert offset == len(content)
    return tensors


async def test_a_binary_request_and_response_from_the_specification() -> None:
    rng = np.random.default_rng(20)
    values = np.stack([with_gaps(rng, 64) for _ in range(3)])
    body, headers = binary_request([("INPUT", values, "FP32")], {"binary_data_output": True}, id="req-7")
    async with serving() as (_, http):
        response = await http.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    head = json.loads(response.content[: int(response.headers["inference-header-content-length"])])
    assert head["id"] == "req-7"
    assert head["model_name"] == "convewma"
    assert head["model_version"] == MODEL_VERSION
    tensors = read_response(response.content, response.headers)
    assert list(tensors) == ["SMOOTHED", "ALPHAS"]
    np.testing.assert_allclose(tensors["ALPHAS"], ALPHAS, rtol=1e-12)
    smoothed = tensors["SMOOTHED"]
    assert smoothed is not None
    assert smoothed.shape == (3, len(ALPHAS), 64)
    for row, got in zip(values.astype(np.float32).astype(np.float64), smoothed, strict=True):
        assert_close(got.astype(np.float64), expected(row, ALL), 1e-5)


async def test_json_data_nested_and_flat_with_mixed_output_encodings() -> None:
    values = [[1.0, None, 3.0, 4.5], [2.0, 2.5, None, None]]
    flat = [v for row in values for v in row]
    async with serving() as (_, http):
        answers = []
        for data in (values, flat):
            request = {
                "inputs": [{"name": "INPUT", "shape": [2, 4], "datatype": "FP64", "data": data}],
                "outputs": [{"name": "SMOOTHED", "parameters": {"binary_data": True}}, {"name": "ALPHAS"}],
            }
            response = await http.post(INFER, content=orjson.dumps(request))
            assert response.status_code == 200, response.text
            answers.append(read_response(response.content, response.headers))
    for tensors in answers:
        smoothed = tensors["SMOOTHED"]
        assert smoothed is not None
        assert smoothed.dtype == np.float64
        for row, got in zip(values, smoothed, strict=True):
            x = np.array([math.nan if v is None else v for v in row])
            assert_close(got, expected(x, ALL), 1e-12)
    np.testing.assert_array_equal(answers[0]["SMOOTHED"], answers[1]["SMOOTHED"])


async def test_series_with_nothing_observed_answer_nan_as_on_smooth() -> None:
    # A chunk of a stream may hold only missing values (an outage): /smooth answers null,
    # and the same request here answers NaN, not an error.
    values = np.array([[np.nan, np.nan, np.nan], [1.0, np.nan, 2.0]])
    body, headers = binary_request([("INPUT", values, "FP64")], {"binary_data_output": True})
    async with serving() as (_, http):
        response = await http.post(INFER, content=body, headers=headers)
        smooth = await post(http, {"series": [[None, None, None], [1.0, None, 2.0]], "dtype": "float64"})
    smoothed = read_response(response.content, response.headers)["SMOOTHED"]
    assert smoothed is not None
    assert np.isnan(smoothed[0]).all()
    reply = np.array(smooth.json()["smoothed"], dtype=np.float64)
    np.testing.assert_array_equal(smoothed, reply)


async def test_compressed_bodies_are_bounded_by_their_decompressed_size() -> None:
    values = np.zeros((8, 5000), np.float64)  # 320 kB of zeros: a few hundred bytes gzipped
    body, headers = binary_request([("INPUT", values, "FP64")])
    async with serving() as (_, http):
        small, small_headers = binary_request([("INPUT", values[:, :100], "FP64")])
        ok = await http.post(
            INFER, content=gzip.compress(small), headers={**small_headers, "Content-Encoding": "gzip"}
        )
        refused = await http.post(
            INFER, content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"}
        )
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 413
    assert refused.json() == {"error": "the decompressed body exceeds the limit of 200000 bytes"}


def _input(name: str, shape: list[int], datatype: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, **fields}


ONE = _input("INPUT", [1, 2], "FP32", data=[1.0, 2.0])
BAD_JSON: list[tuple[Any, int, str]] = [
    ([], 400, "the inference header must be a JSON object, got list"),
    ({"inputs": [ONE], "extra": 1}, 400, "unknown field(s) ['extra'] in the inference request"),
    ({"inputs": []}, 400, "'inputs' must be a non-empty list of tensors"),
    (
        {"inputs": [_input("X", [1], "FP32", data=[1.0])]},
        400,
        "unknown input 'X'; this model takes INPUT, LENGTHS",
    ),
    ({"inputs": [ONE, ONE]}, 400, "input INPUT is given 2 times"),
    (
        {"inputs": [_input("INPUT", [1, 2], "FP16", data=[1, 2])]},
        400,
        "input INPUT has datatype 'FP16'; expected FP32 or FP64",
    ),
    (
        {"inputs": [_input("INPUT", [1, -2], "FP32", data=[])]},
        400,
        "'shape' must be a list of non-negative integers",
    ),
    (
        {"inputs": [_input("INPUT", [1, 3], "FP32", data=[1.0, 2.0])]},
        400,
        "'data' holds 2 values, but shape [1, 3] takes 3",
    ),
    (
        {"inputs": [_input("INPUT", [1, 2], "FP32", data=[1.0, "2"])]},
        400,
        "data[1] = '2'; expected numbers or null",
    ),
    (
        {"inputs": [_input("INPUT", [1, 2], "FP32", data=[1.0, True])]},
        400,
        "data[1] = True; expected numbers or null",
    ),
    (
        {"inputs": [_input("INPUT", [1, 2], "FP32")]},
        400,
        "input INPUT has neither 'data' nor a binary_data_size",
    ),
    (
        {"inputs": [_input("INPUT", [2], "FP32", data=[1.0, 2.0])]},
        400,
        "input INPUT must have shape [N, T], got [2]",
    ),
    (
        {"inputs": [_input("INPUT", [0, 2], "FP32", data=[])]},
        400,
        "input INPUT has shape [0, 2]: it holds no series",
    ),
    (
        {"inputs": [_input("INPUT", [9, 1], "FP32", data=[1.0] * 9)]},
        413,
        "input INPUT has 9 series; the limit is 8",
    ),
    (
        {"inputs": [_input("INPUT", [1, 2], "FP32", data=[1.0, 1e39])]},
        400,
        "INPUT[0, 1] = inf is not a finite float32",
    ),
    (
        {"inputs": [ONE], "parameters": {"span": 3}},
        400,
        "unknown parameter(s) ['span']; expected channels, pairing",
    ),
    (
        {"inputs": [ONE], "parameters": {"gaps": "fill"}},
        400,
        "'gaps' must be one of ['decay', 'skip'], got 'fill'",
    ),
    ({"inputs": [ONE], "parameters": {"channels": "nope"}}, 400, "channels[0] = 'nope' is not one of"),
    ({"inputs": [ONE], "parameters": {"stride": 0}}, 400, "'stride' must be an integer in 1..5000, got 0"),
    (
        {"inputs": [ONE], "parameters": {"channels": [1]}},
        400,
        "parameter 'channels' of the request must be a string",
    ),
    ({"inputs": [ONE], "parameters": {"pairing": "each"}}, 400, "'channels' is required with pairing 'each'"),
    (
        {"inputs": [ONE], "parameters": {"timeout": -1}},
        400,
        "parameter timeout must be a number of microseconds > 0",
    ),
    (
        {"inputs": [ONE], "parameters": {"binary_data_output": 1}},
        400,
        "binary_data_output must be true or false",
    ),
    (
        {"inputs": [ONE], "outputs": [{"name": "MEAN"}]},
        400,
        "unknown output 'MEAN'; this model gives SMOOTHED",
    ),
    ({"inputs": [ONE], "outputs": [{"name": "HISTORY"}]}, 400, "output HISTORY needs input HISTORY"),
    (
        {"inputs": [ONE], "outputs": [{"name": "ALPHAS"}, {"name": "ALPHAS"}]},
        400,
        "output ALPHAS is asked for twice",
    ),
    (
        {"inputs": [ONE], "outputs": [{"name": "ALPHAS", "parameters": {"classification": 2}}]},
        400,
        "output ALPHAS: unsupported parameter(s) ['classification']",
    ),
    (
        {"inputs": [ONE, _input("LENGTHS", [1], "INT64", data=[0])]},
        400,
        "LENGTHS[0] = 0 is not in 1..2 (the row width)",
    ),
    (
        {"inputs": [ONE, _input("LENGTHS", [2], "INT64", data=[1, 2])]},
        400,
        "input LENGTHS must have shape [1]",
    ),
    (
        {"inputs": [ONE, _input("HISTORY_LENGTHS", [1], "INT64", data=[0])]},
        400,
        "HISTORY_LENGTHS needs input HISTORY",
    ),
    (
        {"inputs": [ONE, _input("HISTORY", [2, 1], "FP32", data=[1.0, 2.0])]},
        400,
        "input HISTORY has 2 rows for the 1 rows",
    ),
    (
        {"inputs": [ONE, _input("TIMES", [1, 3], "FP64", data=[1, 2, 3])]},
        400,
        "input TIMES must have the shape of INPUT",
    ),
    (
        {"inputs": [ONE, _input("TIMES", [1, 2], "FP64", data=[2, 1])]},
        400,
        "TIMES[0][1] = 1.0 s is not after",
    ),
    (
        {"inputs": [ONE, _input("TIMES", [1, 2], "FP64", data=[1, None])]},
        400,
        "TIMES[0, 1] = nan: every value needs a finite",
    ),
    (
        {"inputs": [ONE, _input("TIMES", [1, 2], "FP32", data=[1, 2])]},
        400,
        "input TIMES has datatype 'FP32'; expected FP64",
    ),
    (
        {"inputs": [ONE], "parameters": {"max_gap": 0}},
        400,
        "parameter max_gap must be a number of seconds > 0",
    ),
    (
        {"inputs": [ONE, _input("HISTORY_TIMES", [1, 0], "FP64", data=[])]},
        400,
        "input HISTORY_TIMES needs input TIMES",
    ),
    (
        {
            "inputs": [
                ONE,
                _input("TIMES", [1, 2], "FP64", data=[5, 6]),
                _input("HISTORY", [1, 1], "FP32", data=[1.0]),
            ]
        },
        400,
        "input HISTORY with TIMES needs HISTORY_TIMES",
    ),
    (
        {
            "inputs": [
                ONE,
                _input("TIMES", [1, 2], "FP64", data=[5, 6]),
                _input("HISTORY", [1, 1], "FP32", data=[1.0]),
                _input("HISTORY_TIMES", [1, 1], "FP64", data=[5]),
            ]
        },
        400,
        "times[0][0] = 5.0 s is not after history_times[0][0] = 5.0 s",
    ),
]


@pytest.mark.parametrize(("request_", "status", "message"), BAD_JSON)
async def test_bad_requests_are_refused_with_their_reason(request_, status, message) -> None:
    async with serving() as (_, http):
        response = await http.post(INFER, content=orjson.dumps(request_))
        assert response.status_code == status, response.text
        assert list(response.json()) == ["error"]
        assert message in response.json()["error"]
        # and the server goes on answering
        assert (await http.post(INFER, content=orjson.dumps({"inputs": [ONE]}))).status_code == 200


async def test_binary_framing_errors_name_the_byte_counts() -> None:
    values = np.ones((2, 3), np.float32)
    body, headers = binary_request([("INPUT", values, "FP32")])
    length = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:length])
    cases = [
        (body[:-1], headers, "add up to 24 bytes, but 23 bytes follow the inference header"),
        (body + b"\0", headers, "add up to 24 bytes, but 25 bytes follow"),
        (
            body,
            {"Inference-Header-Content-Length": "x"},
            "Inference-Header-Content-Length must be a number of bytes up to the body's "
            f"{len(body)}, got 'x'",
        ),
        (body, {"Inference-Header-Content-Length": str(len(body) + 1)}, "up to the body's"),
        (body, {}, "the inference header is not JSON"),
    ]
    head["inputs"][0]["parameters"]["binary_data_size"] = 20
    wrong = json.dumps(head).encode()
    cases.append(
        (
            wrong + body[length:],
            {"Inference-Header-Content-Length": str(len(wrong))},
            "binary_data_size is 20 bytes, but shape [2, 3] of FP32 takes 24",
        )
    )
    head["inputs"][0]["data"] = [1, 2, 3, 4, 5, 6]
    both = json.dumps(head).encode()
    cases.append(
        (both, {"Inference-Header-Content-Length": str(len(both))}, "has both 'data' and a binary_data_size")
    )
    async with serving() as (_, http):
        for content, extra, message in cases:
            response = await http.post(INFER, content=content, headers=extra)
            assert response.status_code == 400, response.text
            assert message in response.json()["error"], (message, response.text)


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/v2/models/other", 404, "unknown model 'other': this server serves 'convewma'"),
        ("POST", "/v2/models/other/infer", 404, "unknown model 'other'"),
        (
            "GET",
            "/v2/models/convewma/versions/2/ready",
            404,
            "model convewma has no version '2'; loaded: sha256:",
        ),
        ("GET", "/v2/nothing", 404, "Not Found"),
        ("GET", INFER, 405, "Method Not Allowed"),
    ],
)
async def test_protocol_errors_use_the_error_field(method, path, status, error) -> None:
    async with serving() as (_, http):
        response = await http.request(method, path)
    assert response.status_code == status
    assert error in response.json()["error"]


async def test_metadata_health_and_the_loaded_version() -> None:
    async with serving() as (app, http):
        server = await http.get("/v2")
        metadata = await http.get("/v2/models/convewma")
        versioned = await http.get(f"/v2/models/convewma/versions/{MODEL_VERSION}")
        live, ready = await http.get("/v2/health/live"), await http.get("/v2/health/ready")
        model_ready = await http.get(f"/v2/models/convewma/versions/{MODEL_VERSION}/ready")
        app.state.drain.active = True
        draining = await http.get("/v2/health/ready")
        app.state.drain.active = False
        service, app.state.service = app.state.service, None
        unloaded = await http.get("/v2/health/ready")
        app.state.service, service.ready = service, False
        loading = await http.get("/v2/health/ready")
        service.ready = True
    assert server.json() == {
        "name": "convewma-service",
        "version": importlib.metadata.version("convewma-service"),
        "extensions": ["binary_tensor_data", "parameters"],
    }
    variable = {"INPUT": [-1, -1], "LENGTHS": [-1], "HISTORY": [-1, -1], "HISTORY_LENGTHS": [-1]}
    variable |= {"TIMES": [-1, -1], "HISTORY_TIMES": [-1, -1], "SMOOTHED": [-1, -1, -1]}
    variable |= {"SMOOTHED_LENGTHS": [-1], "ALPHAS": [-1]}
    inputs = {"INPUT": "FP32", "LENGTHS": "INT64", "HISTORY": "FP32", "HISTORY_LENGTHS": "INT64"}
    inputs |= {"TIMES": "FP64", "HISTORY_TIMES": "FP64"}
    outputs = {"SMOOTHED": "FP32", "SMOOTHED_LENGTHS": "INT64", "ALPHAS": "FP64", "HISTORY": "FP32"}
    outputs |= {"HISTORY_LENGTHS": "INT64", "HISTORY_TIMES": "FP64"}
    assert metadata.json() == {
        "name": "convewma",
        "versions": [MODEL_VERSION],
        "platform": "pytorch",
        "inputs": [{"name": n, "datatype": d, "shape": variable[n]} for n, d in inputs.items()],
        "outputs": [{"name": n, "datatype": d, "shape": variable[n]} for n, d in outputs.items()],
        "parameters": {
            "channels": ",".join(SHIPPED.channels),
            "kernel_size": SHIPPED.kernel_size,
            "max_series": 8,
            "max_length": 5000,
            "max_body_bytes": MAX_BODY_BYTES,
        },
    }
    assert versioned.json() == metadata.json()
    for answer, document in [
        (live, {"live": True}),
        (ready, {"ready": True}),
        (model_ready, {"ready": True}),
    ]:
        assert (answer.status_code, answer.json()) == (200, document)
        assert answer.headers["content-type"] == "application/json"
    assert (draining.status_code, draining.json()) == (400, {"error": "the server is shutting down"})
    for answer in (unloaded, loading):
        assert (answer.status_code, answer.json()) == (400, {"error": "the model is not loaded yet"})


async def test_a_timeout_parameter_shortens_the_request_s_deadline() -> None:
    request = {"inputs": [ONE], "parameters": {"timeout": 1}}  # one microsecond: past at once
    async with serving() as (_, http):
        late = await http.post(INFER, content=orjson.dumps(request))
        request["parameters"] = {"timeout": 60_000_000}  # a minute: the server's own limit stays
        on_time = await http.post(INFER, content=orjson.dumps(request))
    assert late.status_code == 504, late.text
    assert late.json() == {"error": "the request did not complete within the server's timeout"}
    assert on_time.status_code == 200, on_time.text
    assert on_time.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in on_time.headers


async def test_oip_and_json_requests_share_batches() -> None:
    rng = np.random.default_rng(21)
    rows = [with_gaps(rng, 50) for _ in range(8)]
    async with serving(max_wait_ms=200.0) as (_, http):
        before = (await scrape(http)).value("convewma_batches_total", outcome="ok")

        async def oip(row: np.ndarray) -> np.ndarray:
            body, headers = binary_request([("INPUT", row[None], "FP64")], {"binary_data_output": True})
            response = await http.post(INFER, content=body, headers=headers)
            smoothed = read_response(response.content, response.headers)["SMOOTHED"]
            assert smoothed is not None
            return smoothed[0]

        async def smooth(row: np.ndarray) -> np.ndarray:
            values = [None if np.isnan(v) else float(v) for v in row]
            response = await post(http, {"series": [values], "dtype": "float64"})
            return np.array(response.json()["smoothed"][0], dtype=np.float64)

        answers = await asyncio.gather(*(oip(r) if i % 2 else smooth(r) for i, r in enumerate(rows)))
        batches = (await scrape(http)).value("convewma_batches_total", outcome="ok") - before
    assert batches < len(rows)  # 8 requests, both routes, in fewer forwards
    for row, got in zip(rows, answers, strict=True):
        assert_close(got, expected(row, ALL), 1e-12)


async def test_a_large_request_is_parsed_and_encoded_in_the_codec_thread() -> None:
    # 8 x 5000 FP32 (160 kB) passes the size under which the event loop parses a body itself,
    # and the answer in JSON (8 x C x 5000 values) the size under which it encodes one.
    rng = np.random.default_rng(23)
    values = rng.normal(size=(8, 5000)).cumsum(axis=1)
    body, headers = binary_request([("INPUT", values, "FP32")], {"binary_data_output": False})
    assert len(body) > 128 * 1024
    async with serving() as (_, http):
        response = await http.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    smoothed = read_response(response.content, response.headers)["SMOOTHED"]
    assert smoothed is not None
    assert smoothed.shape == (8, len(ALPHAS), 5000)
    for row in (0, 7):
        reference = expected(values[row].astype(np.float32).astype(np.float64), ALL)
        assert_close(smoothed[row].astype(np.float64), reference, 1e-5)
