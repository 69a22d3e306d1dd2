"""HTTP routes declared once, for both the Functions app and the OpenAPI document.

A :class:`Route` names its function, method, path, handler (``"module:function"``, imported
when first called, so ``function_app`` stays light at cold start) and its OpenAPI operation
(summary, parameters, request body, responses). ``function_app`` registers every route of
:func:`registered_routes` as an HTTP function, and ``GET /api/openapi.json`` serves
:func:`openapi_document`, derived from the same declarations: a route and its documentation
cannot drift apart (``tests/test_routes.py`` checks the registered, declared and documented
sets are one).

Each concern declares its routes and the schemas they use in its own ``routes`` module, beside
the handlers (``http``) and the service they call:

- :mod:`shared.runs.routes`: start, list and get runs, a run's report (handlers in
  :mod:`shared.runs.http` and :mod:`shared.report_http`); schemas ``StartRun``, ``Started``,
  ``Run``.
- :mod:`shared.events.routes`: anomaly events (:mod:`shared.events.http`); schemas
  ``AnomalyEvent``, ``AnomalyEventDetail``, ``Prediction``.
- :mod:`shared.alerts.routes`: alert rules, mutes, the delivery log.
- :mod:`shared.feedback.routes`: operator feedback and its summary.

This module holds what they share: the document's header, the ``Error`` schema and the route
that serves the document (which is registered but, like most APIs' own description, not in it).
Declaration modules import nothing heavy (no SQLAlchemy, numpy or pandas): ``function_app``
imports them at cold start (``tests/test_coldstart.py``).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import azure.functions as func

    from shared.context import AppContext

# Most items a list call returns (its `limit` parameter's maximum).
MAX_LIST = 500

ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_TEXT = {"400": "Invalid request", "404": "Not found"}


def ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


@dataclass(frozen=True)
class Reply:
    """A documented response besides a route's main one (another success, a specific error)."""

    status: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: ERROR)
    headers: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        reply: dict[str, Any] = {"description": self.description}
        if self.headers:
            reply["headers"] = self.headers
        reply["content"] = {"application/json": {"schema": self.schema}}
        return reply


@dataclass(frozen=True)
class Route:
    """One HTTP operation: its function, where it is served, and its documentation."""

    name: str  # the Functions function name (unique); also the operationId by default
    method: str  # GET, POST, DELETE
    path: str  # the route template after /api/, e.g. "alerts/rules/{rule_id}"
    handler: str  # "package.module:function", called as handler(ctx, req)
    summary: str
    description: str = ""
    operation_id: str = ""  # when it differs from name (the older routes' camelCase ids)
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None  # the request body's JSON schema
    body_required: bool = True
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    status: str = "200"
    response_description: str = ""  # default: the summary
    media_type: str = "application/json"
    headers: dict[str, Any] | None = None  # of the main response
    errors: tuple[str, ...] = ("400",)  # other statuses, with an Error body and a stock text
    replies: tuple[Reply, ...] = ()  # other statuses described one by one
    documented: bool = True  # False only for the route serving the document itself

    def resolve(self) -> Callable[[AppContext, func.HttpRequest], func.HttpResponse]:
        module, function = self.handler.split(":")
        return getattr(importlib.import_module(module), function)

    def operation(self) -> dict[str, Any]:
        main: dict[str, Any] = {"description": self.response_description or self.summary}
        if self.headers:
            main["headers"] = self.headers
        main["content"] = {self.media_type: {"schema": self.response}}
        responses = {self.status: main}
        for code in self.errors:
            responses[code] = Reply(code, _ERROR_TEXT.get(code, "Error")).as_dict()
        for reply in self.replies:
            responses[reply.status] = reply.as_dict()
        op: dict[str, Any] = {
            "summary": self.summary,
            "operationId": self.operation_id or self.name,
            "responses": responses,
        }
        if self.description:
            op["description"] = self.description
        # The template's path parameters first, in its order, unless declared explicitly.
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_names(self.path)
            if not any(p["name"] == name and p["in"] == "path" for p in self.parameters)
        ] + list(self.parameters)
        if params:
            op["parameters"] = params
        if self.body is not None:
            op["requestBody"] = {
                "required": self.body_required,
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


def limit(default: int) -> dict[str, Any]:
    """The ``limit`` query parameter of a list call (``shared.api.limit_param`` checks it)."""
    return query(
        "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": default}
    )


# The concerns' declaration modules, in the document's order.
_CONCERNS = (
    "shared.runs.routes",
    "shared.events.routes",
    "shared.alerts.routes",
    "shared.feedback.routes",
)


def declared_routes() -> list[Route]:
    """Every documented route, concern by concern (light: the declarations import no handler)."""
    return [route for module in _CONCERNS for route in importlib.import_module(module).ROUTES]


OPENAPI_ROUTE = Route(
    name="openapi",
    method="GET",
    path="openapi.json",
    handler="shared.routes:openapi_handler",
    summary="This OpenAPI document",
    documented=False,
)


def registered_routes() -> list[Route]:
    """Every HTTP function ``function_app`` registers: the documented routes and the document's."""
    return [*declared_routes(), OPENAPI_ROUTE]


# What every operation shares: the function key (``shared.api.KEY_PARAM`` is the query form,
# accepted on every route and never a parameter of its own) and the Error body.
INFO = {
    "title": "Sensor batch scoring",
    "version": "1.0.0",
    "description": "Start scoring runs, watch them and query anomalies. Every call needs a "
    "function key (`code` query parameter or `x-functions-key` header); `code` is accepted "
    "on every operation besides its own parameters, and is never logged. Malformed input "
    "is a 400 with an `error` message.",
}
SECURITY_SCHEMES = {
    "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
    "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
}
SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
}


def declared_schemas() -> dict[str, Any]:
    """The schemas of every concern (each name declared once)."""
    schemas = dict(SCHEMAS)
    for module in _CONCERNS:
        for name, schema in importlib.import_module(module).SCHEMAS.items():
            if name in schemas:
                raise ValueError(f"schema {name} is declared twice (again in {module})")
            schemas[name] = schema
    return schemas


def openapi_document(routes: list[Route] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``routes`` (default: every declared route), a new dict."""
    paths: dict[str, dict[str, Any]] = {}
    for route in declared_routes() if routes is None else routes:
        if not route.documented:
            continue
        item = paths.setdefault("/" + route.path, {})
        method = route.method.lower()
        if method in item:
            raise ValueError(f"{route.method} /{route.path} is declared twice")
        item[method] = route.operation()
    return copy.deepcopy(
        {
            "openapi": "3.0.3",
            "info": INFO,
            "servers": [{"url": "/api"}],
            "security": [{name: []} for name in SECURITY_SCHEMES],
            "paths": paths,
            "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": declared_schemas()},
        }
    )


def openapi_handler(ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    from shared.api import json_response

    return json_response(openapi_document())
