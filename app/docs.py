"""What ``/docs`` and ``/redoc`` show beyond the models: named examples and UI settings.

The pages and their assets are served by the app itself (``fastapi_offline`` ships
Swagger UI and ReDoc), so the docs work without internet access. Each request example
is paired, by name, with the answer the shipped model gives to it (every float rounded
to ``EXAMPLE_DECIMALS``); ``tests/api/test_operability.py`` posts every one and
compares.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
EXAMPLE_DECIMALS = 4
# Null turns off Swagger UI's online validator (the only request it could make elsewhere).
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}
MODEL_VERSION = "sha256:a863fb4361bc341cc28ccae501f8a47b2de4ff14daf8f6099dad74fd777c7d0f"
ALL_CHANNELS = ["infl", "realint", "tbilrate", "unemp"]

SMOOTH_REQUESTS: dict[str, dict[str, Any]] = {
    "all-channels": {
        "summary": "One series by every channel, the model's warm-up",
        "value": {"series": [[1.0, 2.0, 3.0, 4.0]]},
    },
    "chosen-channels": {
        "summary": "Two series by two channels (by name and by index), adjusted warm-up",
        "value": {
            "series": [[1.0, 2.0, 3.0, 2.5], [10, 12, 11]],
            "channels": ["infl", 3],
            "warmup": "adjust",
        },
    },
}

SMOOTH_RESPONSES: dict[str, dict[str, Any]] = {
    "all-channels": {
        "summary": "smoothed[0][j]: the series by channel j",
        "value": {
            "smoothed": [
                [
                    [0.384, 1.0045, 1.7708, 2.6268],
                    [0.3334, 0.889, 1.5928, 2.3953],
                    [0.9302, 1.9253, 2.925, 3.9249],
                    [0.957, 1.9552, 2.9551, 3.9551],
                ]
            ],
            "channels": ALL_CHANNELS,
            "alphas": [0.384, 0.3334, 0.9302, 0.957],
            "model_version": MODEL_VERSION,
        },
    },
    "chosen-channels": {
        "summary": "smoothed[i][j]: series i by channels[j], in the order asked",
        "value": {
            "smoothed": [
                [[1.0, 1.6188, 2.311, 2.3958], [1.0, 1.9588, 2.9553, 2.5196]],
                [[10.0, 11.2376, 11.1185], [10.0, 11.9176, 11.0394]],
            ],
            "channels": ["infl", "unemp"],
            "alphas": [0.384, 0.957],
            "model_version": MODEL_VERSION,
        },
    },
}


def smooth_request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The ``requestBody`` of ``POST /smooth``: ``schema`` and the named examples."""
    return {
        "requestBody": {"required": True, "content": {JSON: {"schema": schema, "examples": SMOOTH_REQUESTS}}}
    }


SMOOTH_OK: dict[str, Any] = {"content": {JSON: {"examples": SMOOTH_RESPONSES}}}
