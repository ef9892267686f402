"""Prints ``MODEL_VERSION`` and ``SMOOTH_RESPONSES`` for ``app/api/docs.py``: the live app's
answer to each request example, floats rounded to ``EXAMPLE_DECIMALS``, as Python source
to paste there (then ``ruff format app/api/docs.py``). Run after the shipped model changes:

    python -m tests.api.docs_examples
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from app.api.docs import EXAMPLE_DECIMALS, SMOOTH_REQUESTS, SMOOTH_RESPONSES
from app.main import create_app
from tests.api.test_contract import settings


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, EXAMPLE_DECIMALS)
    if isinstance(value, list):
        return [rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return value


async def answers() -> dict[str, Any]:
    app = create_app(settings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            out = {}
            for name, example in SMOOTH_REQUESTS.items():
                response = await http.post("/smooth", json=example["value"])
                assert response.status_code == 200, (name, response.text)
                summary = SMOOTH_RESPONSES.get(name, {}).get("summary", "")
                out[name] = {"summary": summary, "value": rounded(response.json())}
            return out


def source(value: Any, key: str = "") -> str:
    """``value`` as the Python source of app/api/docs.py (JSON-like: ``null`` is defined there)."""
    if key == "model_version":
        return "MODEL_VERSION"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(source(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {source(v, k)}" for k, v in value.items()) + "}"
    return json.dumps(value)


if __name__ == "__main__":
    examples = asyncio.run(answers())
    print(f"MODEL_VERSION = {json.dumps(next(iter(examples.values()))['value']['model_version'])}")
    print("SMOOTH_RESPONSES: dict[str, dict[str, Any]] = " + source(examples))
