"""The plain FastAPI endpoints the load benchmark compares against.

What a generic serving framework would write: a pydantic request model, FastAPI's
default JSON response, and one ``F.conv1d`` call per request, with the same shipped
weights. ``POST /smooth`` returns a plain dict, which FastAPI turns into JSON through
``jsonable_encoder`` and ``json.dumps`` (the default ``JSONResponse``). ``POST
/smooth-typed`` is the same endpoint with a declared response model, which recent FastAPI
serialises with pydantic-core instead: shown too, as the best case of the generic path.
Run: ``uvicorn --app-dir benchmarks baseline_app:app``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from fastapi import FastAPI
from pydantic import BaseModel

from app.core.weights import load_weights

loaded = load_weights(os.environ.get("CONVEWMA_WEIGHTS", "app/models/convewma.safetensors"))
model = loaded.model.eval()
with torch.no_grad():
    kernel = model.kernel().flip(-1).unsqueeze(1).float()  # (C, 1, K), oldest tap first
    alphas = model.alphas.tolist()
app = FastAPI()


class SmoothRequest(BaseModel):
    series: list[list[float]]


class SmoothResponse(BaseModel):
    smoothed: list[list[list[float]]]
    channels: list[str]
    alphas: list[float]


@app.post("/smooth")
def smooth(request: SmoothRequest):  # type: ignore[no-untyped-def]
    return compute(request)


@app.post("/smooth-typed", response_model=SmoothResponse)
def smooth_typed(request: SmoothRequest) -> dict[str, object]:
    return compute(request)


def compute(request: SmoothRequest) -> dict[str, object]:
    lengths = [len(s) for s in request.series]
    x = torch.zeros(len(lengths), 1, max(lengths))
    for row, values in enumerate(request.series):
        x[row, 0, : len(values)] = torch.tensor(values)
    with torch.no_grad():
        y = F.conv1d(F.pad(x, (kernel.shape[-1] - 1, 0)), kernel.expand(-1, 1, -1).contiguous())
    return {
        "smoothed": [y[i, :, :n].tolist() for i, n in enumerate(lengths)],
        "channels": list(loaded.card.channels),
        "alphas": alphas,
    }
