"""HTTP routes declared once, for both the Functions app and the OpenAPI document.

A :class:`Route` names its function, method, path, handler (``"module:function"``, imported
when first called, so ``function_app`` stays light at cold start) and its OpenAPI operation
(summary, parameters, request body, responses). ``function_app`` registers every declared
route as an HTTP function, and ``GET /api/openapi.json`` serves :func:`openapi_document`: the
hand-written document of the older routes (``shared.api.OPENAPI``) with the declared routes'
paths and schemas merged in. A declared route and its documentation cannot drift apart.

Alert routes are declared in :mod:`shared.alerts.routes`, feedback routes in
:mod:`shared.feedback.routes`, each beside the service its handlers call.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}


@dataclass(frozen=True)
class Route:
    """One HTTP operation: its function, where it is served, and its documentation."""

    name: str  # the Functions function name (unique)
    method: str  # GET, POST, DELETE
    path: str  # the route template after /api/, e.g. "alerts/rules/{rule_id}"
    handler: str  # "package.module:function", called as handler(ctx, req)
    summary: str
    description: str = ""
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None  # the request body's JSON schema
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    status: str = "200"
    errors: tuple[str, ...] = ("400",)  # other documented statuses (an Error body)

    def resolve(self) -> Callable:
        module, function = self.handler.split(":")
        return getattr(importlib.import_module(module), function)

    def operation(self) -> dict[str, Any]:
        op: dict[str, Any] = {
            "summary": self.summary,
            "operationId": self.name,
            "responses": {
                self.status: {
                    "description": self.summary,
                    "content": {"application/json": {"schema": self.response}},
                },
                **{
                    code: {
                        "description": {"400": "Invalid request", "404": "Not found"}.get(
                            code, "Error"
                        ),
                        "content": {"application/json": {"schema": ERROR}},
                    }
                    for code in self.errors
                },
            },
        }
        if self.description:
            op["description"] = self.description
        params = list(self.parameters)
        for name in _path_names(self.path):
            if not any(p["name"] == name and p["in"] == "path" for p in params):
                params.insert(
                    0, {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                )
        if params:
            op["parameters"] = params
        if self.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.body}},
            }
        return op


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        param["description"] = description
    return param


def declared_routes() -> list[Route]:
    """Every declared route (light: the declarations import no handler)."""
    from shared.alerts.routes import ROUTES as ALERT_ROUTES
    from shared.feedback.routes import ROUTES as FEEDBACK_ROUTES

    return [*ALERT_ROUTES, *FEEDBACK_ROUTES]


def declared_schemas() -> dict[str, Any]:
    from shared.alerts.routes import SCHEMAS as ALERT_SCHEMAS
    from shared.feedback.routes import SCHEMAS as FEEDBACK_SCHEMAS

    return {**ALERT_SCHEMAS, **FEEDBACK_SCHEMAS}


def openapi_document(base: dict[str, Any], routes: list[Route] | None = None) -> dict[str, Any]:
    """``base`` with the declared routes' operations and schemas merged in (a copy)."""
    doc = copy.deepcopy(base)
    for route in declared_routes() if routes is None else routes:
        item = doc["paths"].setdefault("/" + route.path, {})
        method = route.method.lower()
        if method in item:
            raise ValueError(f"{route.method} /{route.path} is documented twice")
        item[method] = route.operation()
    doc["components"]["schemas"].update(declared_schemas())
    return doc
