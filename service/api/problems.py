"""Error bodies in the OpenAPI document as they are sent: RFC 9457 problem JSON.

Every error the API sends is ``application/problem+json`` (``deps.problem`` and
the handlers in ``service.app``). FastAPI would declare 422 as its own
``HTTPValidationError`` and leave the other error statuses without a body, so
routes declare theirs with :func:`problem_responses`, and :func:`problem_openapi`
rewrites FastAPI's 422 (and any error status declared without a body) to the one
``Problem`` schema. ``/readyz`` keeps its own 503 body (``Readiness``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from service.api.deps import PROBLEM_JSON

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
ERROR_STATUSES = frozenset(range(400, 600))


class ProblemError(BaseModel):
    loc: list[str] = Field(description="Where in the request: query, path, header, body...")
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of this API is sent."""

    type: str = Field(default="about:blank", description="Always about:blank here")
    title: str = Field(description="The HTTP status phrase, e.g. Not Found")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="What went wrong, for a person")
    errors: list[ProblemError] | None = Field(
        default=None, description="422 for an invalid request only: each invalid parameter"
    )


def problem_responses(described: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with its description and the Problem schema."""
    return {
        status: {"description": description, "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}
        for status, description in described.items()
    }


def _is_fastapi_validation_error(response: dict[str, Any]) -> bool:
    schemas = [media.get("schema", {}) for media in response.get("content", {}).values()]
    return any(schema.get("$ref", "").endswith("/HTTPValidationError") for schema in schemas)


def _as_problem(response: dict[str, Any]) -> None:
    response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}


def problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: FastAPI's document with every 4xx/5xx body as the Problem schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            for status, response in operation.get("responses", {}).items():
                if not (status.isdigit() and int(status) in ERROR_STATUSES):
                    continue
                if _is_fastapi_validation_error(response):
                    response["description"] = "Invalid request parameters"
                    _as_problem(response)
                elif "content" not in response:  # declared without a body: it is a problem
                    _as_problem(response)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem.pop("$defs", {}))
        schemas["Problem"] = problem
        app.openapi_schema = schema
        return schema

    return openapi
