"""The ``POST /smooth`` request body of the OpenAPI document. ``smooth_request_body`` runs
when the routes are defined (at import), so it is called here directly as well."""

from __future__ import annotations

from app.api.docs import SMOOTH_REQUESTS, SMOOTH_RESPONSES, smooth_request_body


def test_the_request_body_is_required_and_carries_the_schema_and_the_examples() -> None:
    schema = {"type": "object", "title": "SmoothRequest"}
    assert smooth_request_body(schema) == {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "examples": SMOOTH_REQUESTS}},
        }
    }


def test_every_request_example_has_an_answer_of_the_same_name() -> None:
    assert list(SMOOTH_REQUESTS) == list(SMOOTH_RESPONSES)
    for name, example in SMOOTH_REQUESTS.items():
        answer = SMOOTH_RESPONSES[name]["value"]
        assert len(answer["smoothed"]) == len(example["value"]["series"])
        assert len(answer["channels"]) == len(answer["alphas"])
