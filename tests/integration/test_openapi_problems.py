"""The OpenAPI document declares errors as they are sent: problem JSON with one schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.deps import PROBLEM_JSON
from service.app import create_app
from tests.http_node import VIEWER, app_state, settings_for


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(app_state(settings_for(tmp_path))), client=("testclient", 1))


def responses(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return spec["paths"][path][method]["responses"]  # type: ignore[no-any-return]


def test_every_error_status_is_problem_json(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "errors"} <= set(problem["properties"])
    errors = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if path == "/readyz" or not 400 <= int(status) < 600:
                    continue
                if path.startswith("/dicomweb/studies") and status == "409":
                    # PS3.18 10.5.3: a STOW-RS request none of whose instances was
                    # stored answers 409 with its per-instance reasons (dicom+json).
                    assert list(response["content"]) == ["application/dicom+json"]
                    continue
                errors += 1
                assert response["content"] == {
                    PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (path, method, status)
    assert errors >= 20


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/api/v1/jobs", "get", {"401", "422"}),
        ("/api/v1/jobs/{job_id}", "get", {"401", "404", "422"}),
        ("/api/v1/jobs/{job_id}/retry", "post", {"401", "403", "404", "409", "422"}),
        ("/api/v1/destinations/{name}/echo", "post", {"401", "403", "404", "409"}),
        ("/api/v1/model", "get", {"401", "503"}),
        ("/api/v1/segment", "post", {"401", "411", "413", "415", "422", "503"}),
    ],
)
def test_routes_declare_what_they_send(
    client: TestClient, path: str, method: str, statuses: set[str]
) -> None:
    spec = client.get("/openapi.json").json()
    assert statuses <= set(responses(spec, path, method)), path


def test_a_sent_422_matches_the_declared_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    declared = set(spec["components"]["schemas"]["Problem"]["properties"])
    answer = client.get("/api/v1/jobs?limit=0", headers={"Authorization": f"Bearer {VIEWER}"})
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith(PROBLEM_JSON)
    body = answer.json()
    assert set(body) <= declared and set(
        spec["components"]["schemas"]["Problem"]["required"]
    ) <= set(body)
    assert body["errors"][0]["loc"] == ["query", "limit"]
    readyz = responses(spec, "/readyz", "get")["503"]
    assert readyz["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Readiness"
    }
