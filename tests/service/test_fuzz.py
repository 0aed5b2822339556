"""Schema-driven fuzzing (issue 15): schemathesis builds requests for every operation from the
service's own OpenAPI document (no patched copy) and sends them to the real app on both
stores, with and without the API key. No answer may be a 5xx, and every answer must be one
the document declares, in the declared shape.

A bounded number of cases per operation keeps it to CI's time; `benchmarks/fuzz.py` runs the
same checks for as long as one likes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.config import Settings
from tests.service.helpers import FEATURES_MODEL, random_item

KEY = "fuzz-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CASES_PER_OPERATION = 25


@dataclass(frozen=True)
class Api:
    schema: schemathesis.BaseSchema
    headers: dict[str, str]  # sent with every case: the key, when the app has one


@pytest.fixture(params=["open", "keyed"])
def api(request: pytest.FixtureRequest, store_url: str) -> Iterator[Api]:
    """The real app, started, with a few works and a purchase for requests to find. Keyed,
    every case sends the key, so that its writes get past the check to the stores."""
    key = KEY if request.param == "keyed" else None
    app = create_app(Settings(model_dir=FEATURES_MODEL, store_url=store_url, api_key=key))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        items = [random_item(name, seed=n) for n, name in enumerate(("a", "b", "c"))]
        assert client.post("/items", json={"items": items}).status_code == 200
        sale = client.post("/purchases", json={"user_id": "u", "item_ids": ["a"]})
        assert sale.status_code == 201
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        yield Api(schema, {"X-API-Key": KEY} if key else {})


# Every operation of the document, collected from an app that is never started.
OPERATIONS = [
    (path, method.upper())
    for path, methods in create_app(Settings(model_dir=FEATURES_MODEL)).openapi()["paths"].items()
    for method in methods
]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_operation_answers_as_documented(api: Api, path: str, method: str) -> None:
    """Schemathesis' pytest integration does not run on pytest 9.2 (it sets a node id pytest
    no longer has), so each operation's strategy drives Hypothesis here directly."""

    @given(case=api.schema[path][method].as_strategy())
    @settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def answers_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=api.headers, checks=CHECKS)

    answers_as_documented()
