"""Operability of the HTTP surface, through the real app and its lifespan: compressed
bodies, error messages, HEAD on the probes, the metrics' series and labels, offline docs
and OpenAPI examples that are the shipped model's real answers."""

from __future__ import annotations

import asyncio
import gzip
import importlib
import json
import pkgutil
import random
import re
import string
import zlib
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

import app as app_package
from app.api.docs import EXAMPLE_DECIMALS
from app.api.schemas import RequestError
from app.core.ewma import WARMUP_MODES
from app.main import ROUTES, create_app
from app.serving.budget import MemoryBudget, Reservation
from app.serving.intake import (
    INFLATE_INPUT_BYTES,
    INFLATE_STEP_BYTES,
    BodyLimits,
    Deadline,
    Inflater,
    content_coding,
    read_body,
)
from app.serving.metrics import METHODS
from tests.api.test_contract import serving, settings
from tests.servers import http_scope

pytestmark = pytest.mark.anyio

BASE = "http://test"  # the base URL of tests.api.test_contract.serving
JSON = {"content-type": "application/json"}
MAX_BODY_BYTES = 200_000
SERIES = {"series": [[1.0, 2.0, 3.0, 2.5], [10, 12, 11]], "channels": ["infl", 3]}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def bomb(decompressed_mib: int, member_mib: int = 16) -> bytes:
    """A gzip body of about 1 KiB per MiB it inflates to: one member of zeros, repeated."""
    member = gzipped(bytes(member_mib << 20))
    return member * (decompressed_mib // member_mib)


async def post_encoded(http: httpx.AsyncClient, content: Any, encoding: str) -> httpx.Response:
    return await http.post("/smooth", content=content, headers={**JSON, "content-encoding": encoding})


# -- compressed bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzipped),
        ("x-gzip", gzipped),
        ("GZIP", gzipped),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),  # what some clients send as deflate
        ("gzip", lambda data: gzipped(data[:20]) + gzipped(data[20:])),  # two gzip members
        ("identity", lambda data: data),
    ],
    ids=["gzip", "x-gzip", "upper-case", "deflate-zlib", "deflate-raw", "two-members", "identity"],
)
async def test_a_compressed_body_is_decoded_and_answered_like_a_plain_one(encoding, compress):
    plain = orjson.dumps(SERIES)
    async with serving() as (app, http):
        expected = await http.post("/smooth", content=plain, headers=JSON)
        response = await post_encoded(http, compress(plain), encoding)
        assert app.state.service.budget.used == 0
    assert response.status_code == 200, response.text
    assert response.json() == expected.json()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_streamed_in_tiny_pieces_is_decoded(encoding):
    plain = orjson.dumps(SERIES)
    compressed = gzipped(plain) if encoding == "gzip" else zlib.compress(plain)

    async def pieces() -> AsyncIterator[bytes]:
        for index in range(len(compressed)):
            yield compressed[index : index + 1]

    async with serving() as (_, http):
        expected = await http.post("/smooth", content=plain, headers=JSON)
        response = await post_encoded(http, pieces(), encoding)
    assert response.status_code == 200, response.text
    assert response.json() == expected.json()


async def test_a_compressed_bomb_is_refused_by_its_decompressed_size():
    body = bomb(128)  # 128 MiB of zeros in 128 KiB
    assert len(body) < MAX_BODY_BYTES
    async with serving() as (app, http):
        response = await post_encoded(http, body, "gzip")
        after = await http.post("/smooth", content=orjson.dumps(SERIES), headers=JSON)
        assert app.state.service.budget.used == 0
    assert response.status_code == 413
    assert response.json() == {"detail": f"the decompressed body exceeds the limit of {MAX_BODY_BYTES} bytes"}
    assert response.headers["connection"] == "close"
    assert after.status_code == 200


def test_a_bomb_is_inflated_one_bounded_step_at_a_time():
    pieces = Inflater("gzip").pieces(bomb(1024))
    sizes = [len(next(pieces)) for _ in range(8)]  # lazily: only what is asked for is inflated
    assert sizes == [INFLATE_STEP_BYTES] * 8
    single = Inflater("deflate").pieces(zlib.compress(bytes(64 << 20), 9))
    assert max(len(piece) for piece in single) == INFLATE_STEP_BYTES


@pytest.mark.parametrize(
    ("coding", "compress"),
    [("gzip", lambda data: gzipped(data[:300_000]) + gzipped(data[300_000:])), ("deflate", raw_deflate)],
)
def test_a_large_chunk_inflates_to_exactly_the_body(coding, compress):
    rng = random.Random(7)
    body = orjson.dumps({"series": [[rng.random() for _ in range(50_000)] for _ in range(2)]})
    chunk = compress(body)
    assert len(chunk) > 4 * INFLATE_INPUT_BYTES
    inflater = Inflater(coding)
    assert b"".join([*inflater.pieces(chunk[:1]), *inflater.pieces(chunk[1:])]) == body
    inflater.finish()


async def test_decompressing_hands_the_event_loop_back_between_steps():
    """64 MiB inflated from one small chunk: the loop runs other tasks between the steps."""
    limit = 64 << 20
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    messages = iter([{"type": "http.request", "body": bomb(128), "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    reservation = Reservation(MemoryBudget(10**9))
    task = asyncio.create_task(ticker())
    try:
        with pytest.raises(RequestError) as refused:
            await read_body(receive, None, BodyLimits(limit, 10.0), reservation, Deadline(30.0), "gzip")
    finally:
        task.cancel()
    assert refused.value.status == 413
    steps = limit // INFLATE_STEP_BYTES
    assert ticks >= steps // 2, f"the loop ran {ticks} times during {steps} steps"
    assert reservation.held <= 2 * limit  # reserved as it grew, never past the limit


async def test_the_limit_also_bounds_the_compressed_bytes_sent():
    """Empty gzip members inflate to nothing: the bytes sent are limited all the same."""
    empty = gzipped(b"")

    async def members() -> AsyncIterator[bytes]:
        for _ in range(2 * MAX_BODY_BYTES // len(empty)):
            yield empty

    async with serving() as (app, http):
        response = await post_encoded(http, members(), "gzip")
        assert app.state.service.budget.used == 0
    assert response.status_code == 413
    assert response.json() == {"detail": f"body exceeds the limit of {MAX_BODY_BYTES} bytes"}


async def test_a_decompressed_body_that_could_never_fit_the_memory_budget_is_413():
    body = gzipped(b'{"series": [[1]]}' + b" " * 600_000)  # twice that is over the budget
    async with serving(max_inflight_bytes=1_000_000, max_body_bytes=4_000_000) as (app, http):
        response = await post_encoded(http, body, "gzip")
        assert app.state.service.budget.used == 0
    assert response.status_code == 413
    assert "cannot fit in the server's memory budget" in response.json()["detail"]


@pytest.mark.parametrize(
    "encoding",
    ["br", "compress", "zstd", "gzip, identity", "gzip, gzip", "identity, identity", "deflate;q=1"],
)
async def test_an_unsupported_encoding_is_415_naming_it(encoding):
    async with serving() as (_, http):
        response = await post_encoded(http, gzipped(orjson.dumps(SERIES)), encoding)
    assert response.status_code == 415
    assert response.json() == {
        "detail": f"content-encoding must be gzip, deflate or identity, got {encoding}"
    }


@pytest.mark.parametrize(
    ("encoding", "body", "reason"),
    [
        ("gzip", b"this is not gzip at all", "incorrect header check"),
        ("gzip", gzipped(orjson.dumps(SERIES))[:-12], "it ends before its compressed stream"),
        ("gzip", b"", "it ends before its compressed stream"),
        ("gzip", gzipped(orjson.dumps(SERIES)) + b"garbage", "incorrect header check"),
        ("deflate", zlib.compress(orjson.dumps(SERIES)) + b"garbage", "data after the end of its stream"),
        ("deflate", b"x", "it ends before its compressed stream"),
    ],
    ids=["not-gzip", "truncated", "empty", "trailing-garbage", "deflate-trailing", "deflate-one-byte"],
)
async def test_a_malformed_compressed_body_is_400(encoding, body, reason):
    async with serving() as (app, http):
        response = await post_encoded(http, body, encoding)
        assert app.state.service.budget.used == 0
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith(f"malformed {encoding} body: ")
    assert reason in detail


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        (" Gzip ", "gzip"),
        ("x-gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip,", "gzip"),  # empty list elements are ignored (RFC 9110, 5.6.1)
        (" , deflate ,", "deflate"),
    ],
)
def test_content_coding_names_the_one_supported_coding(header, coding):
    assert content_coding(header) == coding


# -- error messages -------------------------------------------------------------------------------


def nan_at(series_index: int, position: int, token: str, length: int = 20) -> bytes:
    rows = [",".join(["1.5"] * length) for _ in range(series_index + 1)]
    values = ["1.5"] * length
    values[position] = token
    rows[series_index] = ",".join(values)
    return ('{"series": [' + ",".join(f"[{row}]" for row in rows) + "]}").encode()


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("length", [20, 4000], ids=["small-body", "scanned-body"])
async def test_non_finite_values_are_refused_with_their_position(token, length):
    async with serving(max_body_bytes=1_000_000) as (_, http):
        response = await http.post("/smooth", content=nan_at(2, 17, token, length), headers=JSON)
    assert response.status_code == 422
    assert response.json() == {
        "detail": f"{token} is not allowed at series[2][17]: every value must be finite "
        "(null for a missing one)"
    }


LONG = "A" * 5000


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"series": [[1]]}', {"content-type": "text/" + LONG}, 415),
        (b'{"series": [[1]]}', {**JSON, "content-encoding": LONG}, 415),
        (orjson.dumps({"series": [[1]], "channels": [LONG]}), JSON, 422),
        (orjson.dumps({"series": [[1]], "warmup": LONG}), JSON, 422),
        (orjson.dumps({"series": [[1]], LONG: 1}), JSON, 422),
        (orjson.dumps({"series": [[1, LONG]]}), JSON, 422),
        (b'{"series": [[1, ' + b"9" * 4000 + b"]]}", JSON, 422),
        (b'{"series": [[1, "' + LONG.encode() + b'"', JSON, 400),
        (b"{" + LONG.encode() + b"}", JSON, 400),
    ],
    ids=[
        "content-type",
        "content-encoding",
        "channel",
        "warmup",
        "field",
        "string",
        "number",
        "open",
        "bare",
    ],
)
async def test_no_error_message_quotes_more_than_a_short_excerpt(content, headers, status):
    async with serving() as (_, http):
        response = await http.post("/smooth", content=content, headers=headers)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert len(detail) < 200, detail[:300]
    assert "A" * 41 not in detail
    assert "9" * 41 not in detail


async def test_an_unexpected_error_is_a_json_500_without_a_traceback():
    secret = "secret internal state at /srv/app/serving/service.py line 42"

    async def broken(*args: object) -> None:
        raise RuntimeError(secret)

    async with serving() as (app, http):
        app.state.service.smooth = broken
        failed = await http.post("/smooth", content=orjson.dumps(SERIES), headers=JSON)
        del app.state.service.alphas  # /alphas builds its JSON from this
        broken_get = await http.get("/alphas")
        alive = await http.get("/healthz")
        assert app.state.service.budget.used == 0
        assert app.state.service.in_progress == 0
    for response in (failed, broken_get):
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"detail": "internal server error"}
        for leak in ("Traceback", "RuntimeError", "AttributeError", "secret", ".py"):
            assert leak not in response.text
    assert alive.status_code == 200


# -- HEAD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
@pytest.mark.parametrize("draining", [False, True])
async def test_head_on_a_probe_answers_like_get_without_a_body(path, draining):
    async with serving() as (app, http):
        if draining:
            app.state.drain.begin()
        got = await http.get(path)
        head = await http.head(path)
    assert head.status_code == got.status_code
    assert head.content == b""
    assert dict(head.headers) == dict(got.headers)
    assert int(head.headers["content-length"]) == len(got.content) > 0


async def test_head_on_a_probe_before_the_model_is_ready_is_503_like_get():
    app = create_app(settings())  # lifespan not run: no model yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        got, head = await http.get("/readyz"), await http.head("/readyz")
    assert got.status_code == head.status_code == 503
    assert head.content == b""
    assert dict(head.headers) == dict(got.headers)


async def test_head_on_metrics_answers_like_get_without_a_body():
    async with serving() as (_, http):
        for _ in range(2):  # until every label set of the two is there
            await http.get("/metrics")
            await http.head("/metrics")
        got = await http.get("/metrics")
        head = await http.head("/metrics")
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers.keys() == got.headers.keys()
    # The scrape before it counted one request less, so the lengths differ a little.
    assert abs(int(head.headers["content-length"]) - len(got.content)) < len(got.content) // 10


# -- metrics --------------------------------------------------------------------------------------


def samples(text: str) -> list[Any]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


async def test_metrics_have_process_and_python_series_and_no_created_series():
    async with serving() as (_, http):
        assert (await http.post("/smooth", content=orjson.dumps(SERIES), headers=JSON)).status_code == 200
        scraped = samples((await http.get("/metrics")).text)
    names = {sample.name for sample in scraped}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_info",
        "python_gc_objects_collected_total",
    ):
        assert name in names, name
    assert not [name for name in names if name.endswith("_created")]
    assert "convewma_requests_total" in names


async def test_request_metrics_have_a_method_label():
    async with serving() as (_, http):
        await http.get("/healthz")
        await http.head("/healthz")
        await http.request("BREW", "/healthz")
        await http.post("/smooth", content=orjson.dumps(SERIES), headers=JSON)
        scraped = samples((await http.get("/metrics")).text)
    counted = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in scraped
        if s.name == "convewma_requests_total"
    }
    assert counted == {
        ("/healthz", "GET", "200"): 1,
        ("/healthz", "HEAD", "200"): 1,
        ("/healthz", "other", "405"): 1,
        ("/smooth", "POST", "200"): 1,
    }
    durations = {
        (s.labels["route"], s.labels["method"], s.labels["status"])
        for s in scraped
        if s.name == "convewma_request_duration_seconds_count"
    }
    assert durations == set(counted)


async def test_label_sets_stay_bounded_under_random_paths_and_methods():
    """10,000 requests with random paths and methods straight through the ASGI app."""
    rng = random.Random(20240611)
    alphabet = string.ascii_letters + string.digits + "-._~%/"

    def method() -> str:
        if rng.random() < 0.3:
            return rng.choice(sorted(METHODS))
        return "".join(rng.choices(string.ascii_letters, k=rng.randint(1, 12)))

    def path() -> str:
        if rng.random() < 0.2:
            return rng.choice(sorted(ROUTES))
        return "/" + "".join(rng.choices(alphabet, k=rng.randint(0, 40)))

    async with serving() as (app, http):
        for _ in range(10_000):
            await call(app, method(), path())
        scraped = samples((await http.get("/metrics")).text)
    label_sets = {tuple(sorted(s.labels.items())) for s in scraped if s.name == "convewma_requests_total"}
    routes = {dict(labels)["route"] for labels in label_sets}
    methods = {dict(labels)["method"] for labels in label_sets}
    statuses = {dict(labels)["status"] for labels in label_sets}
    assert routes <= ROUTES | {"other"}
    assert methods <= METHODS | {"other"}
    assert "other" in routes
    assert "other" in methods
    assert len(statuses) <= 8, statuses
    # A route label sees a few methods and statuses each: bounded by the routes, not the traffic.
    assert len(label_sets) <= 20 * len(ROUTES | {"other"}), len(label_sets)
    buckets = {s.labels["le"] for s in scraped if s.name == "convewma_request_duration_seconds_bucket"}
    histogram_series = [s for s in scraped if s.name.startswith("convewma_request_duration_seconds")]
    assert len(histogram_series) == len(label_sets) * (len(buckets) + 2)  # buckets, sum, count


async def call(app: FastAPI, method: str, path: str) -> int:
    """One request through the ASGI app (its middleware included), without a client."""
    status = 0
    scope = http_scope(method, path)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # the client never hangs up
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


# -- docs and OpenAPI -----------------------------------------------------------------------------


class References(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_every_asset_from_the_app_itself(page):
    async with serving() as (_, http):
        response = await http.get(page)
        assert response.status_code == 200
        html = response.text
        parser = References()
        parser.feed(html)
        assert len(parser.urls) >= 2  # a script and the favicon at least
        for url in parser.urls:
            parts = urlsplit(url)
            assert not parts.netloc or f"{parts.scheme}://{parts.netloc}" == BASE, url
            asset = await http.get(url)
            assert asset.status_code == 200, url
            assert asset.content, url
        assert (await http.get("/openapi.json")).status_code == 200
    assert not re.findall(r"(?:https?:)?//[\w.-]+\.\w+", html), "a page names another host"
    scripts = [url for url in parser.urls if url.endswith(".js")]
    assert scripts, "no script: the page could not render"


def expected_examples(operation: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    requests = operation["requestBody"]["content"]["application/json"]["examples"]
    answers = operation["responses"]["200"]["content"]["application/json"]["examples"]
    assert set(requests) == set(answers)
    assert requests
    for name, example in requests.items():
        yield name, example["value"], answers[name]["value"]


def assert_matches(got: Any, documented: Any, where: str = "") -> None:
    """Equal, floats to the printed precision (EXAMPLE_DECIMALS decimal places)."""
    if isinstance(documented, float):
        assert isinstance(got, float | int), where
        assert abs(got - documented) <= 0.5 * 10.0**-EXAMPLE_DECIMALS + 1e-9, (where, got, documented)
        assert round(documented, EXAMPLE_DECIMALS) == documented, f"{where} printed past its precision"
    elif isinstance(documented, list):
        assert isinstance(got, list), where
        assert len(got) == len(documented), where
        for index, (a, b) in enumerate(zip(got, documented, strict=True)):
            assert_matches(a, b, f"{where}[{index}]")
    elif isinstance(documented, dict):
        assert isinstance(got, dict), where
        assert got.keys() == documented.keys(), where
        for key in documented:
            assert_matches(got[key], documented[key], f"{where}.{key}")
    else:
        assert got == documented, where


async def test_openapi_examples_are_the_real_answers_of_the_shipped_model():
    async with serving() as (_, http):
        schema = (await http.get("/openapi.json")).json()
        examples = list(expected_examples(schema["paths"]["/smooth"]["post"]))
        for name, request, answer in examples:
            response = await http.post("/smooth", content=orjson.dumps(request), headers=JSON)
            assert response.status_code == 200, (name, response.text)
            assert_matches(response.json(), answer, name)
        alphas = (await http.get("/alphas")).json()
    for _, _, answer in examples:
        assert answer["model_version"] == alphas["model_version"]


def enum_of(prop: dict[str, Any]) -> list[Any]:
    for option in [prop, *prop.get("anyOf", [])]:
        if "enum" in option:
            return list(option["enum"])
    raise AssertionError(f"no enum in {prop}")


async def test_openapi_enums_and_no_internal_names():
    async with serving() as (_, http):
        text = (await http.get("/openapi.json")).text
    schema = json.loads(text)
    request = schema["paths"]["/smooth"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert enum_of(request["properties"]["warmup"]) == list(WARMUP_MODES)
    alphas = schema["components"]["schemas"]["AlphasResponse"]
    assert enum_of(alphas["properties"]["warmup"]) == list(WARMUP_MODES)
    internal = {"parse_smooth_request", "parse_smooth_body", "``", ".py", "app."}
    for module in pkgutil.iter_modules(app_package.__path__):
        internal |= {f"app.{module.name}", f"{module.name}.py"}
        if module.name.startswith("_"):
            continue  # __main__ runs the command line
        imported = importlib.import_module(f"app.{module.name}")
        internal |= {
            name
            for name, value in vars(imported).items()
            if "_" in name.strip("_")
            and callable(value)
            and getattr(value, "__module__", "") == imported.__name__
        }
    leaked = sorted(
        name
        for name in internal
        if (re.search(rf"\b{name}\b", text) if name.isidentifier() else name in text)
    )
    assert not leaked, leaked
