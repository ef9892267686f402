"""What ``/docs`` and ``/redoc`` show beyond the models: named examples and UI settings.

The pages and their assets are served by the app itself (``fastapi_offline`` ships
Swagger UI and ReDoc), so the docs work without internet access. Each request example
is paired, by name, with the answer the shipped model gives to it (every float rounded
to ``EXAMPLE_DECIMALS``); ``tests/api/test_operability.py`` posts every one and
compares. When the shipped model changes, ``python -m tests.api.docs_examples`` prints
the new answers.
"""

from __future__ import annotations

from typing import Any

null = None  # the examples are JSON

JSON = "application/json"
EXAMPLE_DECIMALS = 4
# Null turns off Swagger UI's online validator (the only request it could make elsewhere).
SWAGGER_UI_PARAMETERS: dict[str, Any] = {"validatorUrl": None}
MODEL_VERSION = "sha256:b11f759af8bbef7d1e494e4bf24c5945b5900eb048341859dd94de162e42c1c4"
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
    "missing-values": {
        "summary": "A missing value (null) in a series; output null until 2 values are observed",
        "value": {"series": [[100, null, 101, 99, null, 102]], "channels": ["infl"], "min_periods": 2},
    },
    "continuation": {
        "summary": "The next chunk of a stream, sent with the history the previous answer returned",
        "value": {
            "series": [[99, 100, 102]],
            "history": [[100, 101, null]],
            "channels": ["unemp"],
            "warmup": "adjust",
        },
    },
    "pairing-each": {
        "summary": "Each series by its own channel",
        "value": {"series": [[1, 2, 3], [10, 12, 11]], "pairing": "each", "channels": ["infl", "unemp"]},
    },
    "float64": {
        "summary": "float64 values in and out",
        "value": {
            "series": [[1000000001, 1000000003]],
            "dtype": "float64",
            "channels": [0],
            "warmup": "adjust",
        },
    },
    "skip-gaps-and-stride": {
        "summary": "Gaps skipped (pandas ignore_na=True), every second output",
        "value": {
            "series": [[1, null, 3, 4, null, 6, 7]],
            "gaps": "skip",
            "stride": 2,
            "channels": ["realint"],
        },
    },
    "times": {
        "summary": "Irregular times (RFC 3339 or seconds): each lag decays by the seconds that passed",
        "value": {
            "series": [[20, 21, 21.5, 25]],
            "times": [
                [
                    "2024-05-01T12:00:00Z",
                    "2024-05-01T12:00:01Z",
                    "2024-05-01T12:00:01.5Z",
                    "2024-05-01T12:00:09Z",
                ]
            ],
            "channels": ["infl"],
            "max_gap": 5,
        },
    },
}

SMOOTH_RESPONSES: dict[str, dict[str, Any]] = {
    "all-channels": {
        "summary": "smoothed[0][j]: the series by channel j",
        "value": {
            "smoothed": [
                [
                    [1.0, 1.6141, 2.2991, 3.048],
                    [1.0, 1.595, 2.2503, 2.9617],
                    [1.0, 1.9363, 2.928, 3.9271],
                    [1.0, 1.9593, 2.956, 3.9557],
                ]
            ],
            "channels": ["infl", "realint", "tbilrate", "unemp"],
            "alphas": [0.3716, 0.3193, 0.932, 0.9576],
            "model_version": MODEL_VERSION,
        },
    },
    "chosen-channels": {
        "summary": "smoothed[i][j]: series i by channels[j], in the order asked",
        "value": {
            "smoothed": [
                [[1.0, 1.6141, 2.2991, 2.3876], [1.0, 1.9593, 2.956, 2.5193]],
                [[10.0, 11.2282, 11.1154], [10.0, 11.9187, 11.0389]],
            ],
            "channels": ["infl", "unemp"],
            "alphas": [0.3716, 0.9576],
            "model_version": MODEL_VERSION,
        },
    },
    "missing-values": {
        "summary": "null where fewer than min_periods values were observed; a gap is a step that passes",
        "value": {
            "smoothed": [[[null, null, 100.7169, 99.8019, 99.802, 101.0645]]],
            "channels": ["infl"],
            "alphas": [0.3716],
            "model_version": MODEL_VERSION,
        },
    },
    "continuation": {
        "summary": "The outputs after the history, and the history to send with the next chunk",
        "value": {
            "smoothed": [[[99.0037, 99.9594, 101.9136]]],
            "channels": ["unemp"],
            "alphas": [0.9576],
            "model_version": MODEL_VERSION,
            "history": [[100.0, 101.0, null, 99.0, 100.0, 102.0]],
        },
    },
    "pairing-each": {
        "summary": "smoothed[i][0]: series i by channels[i]",
        "value": {
            "smoothed": [[[1.0, 1.6141, 2.2991]], [[10.0, 11.9187, 11.0389]]],
            "channels": ["infl", "unemp"],
            "alphas": [0.3716, 0.9576],
            "model_version": MODEL_VERSION,
        },
    },
    "float64": {
        "summary": "float64 keeps 1000000001 (float32 would answer 1000000000)",
        "value": {
            "smoothed": [[[1000000001.0, 1000000002.2282]]],
            "channels": ["infl"],
            "alphas": [0.3716],
            "model_version": MODEL_VERSION,
        },
    },
    "skip-gaps-and-stride": {
        "summary": "Outputs at positions 0, 2, 4, 6; position 4 (missing) repeats the output before it",
        "value": {
            "smoothed": [[[1.0, 2.19, 3.0342, 5.2721]]],
            "channels": ["realint"],
            "alphas": [0.3193],
            "model_version": MODEL_VERSION,
        },
    },
    "times": {
        "summary": "The reading 7.5 s after the one before it is beyond max_gap: it stands alone",
        "value": {
            "smoothed": [[[20.0, 20.6141, 21.0008, 25.0]]],
            "channels": ["infl"],
            "alphas": [0.3716],
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
