"""What every HTTP handler shares: errors, JSON responses, the function key, parameter checks.

The routes and their handlers live with each concern (declared in ``shared/<concern>/routes.py``,
handled in ``shared/<concern>/http.py``; see :mod:`shared.routes`). ``function_app`` calls each
handler through :func:`handle` with a real ``azure.functions.HttpRequest``. Every input is
validated: a bad request gets a 4xx with a JSON ``{"error": "..."}`` that says what to fix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import azure.functions as func

from shared.clock import parse_utc
from shared.context import AppContext
from shared.ingestion.validation import InvalidReading, check_id
from shared.routes import MAX_LIST

log = logging.getLogger(__name__)

Handler = Callable[[AppContext, func.HttpRequest], func.HttpResponse]

# The function key's query parameter (the header is ``x-functions-key``): the host checks it,
# every route accepts it, no handler sees it, nothing logs it.
KEY_PARAM = "code"


class BadRequest(ValueError):
    """Invalid input; the message is returned to the caller with a 400."""


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, default=str, indent=1),
        status_code=status,
        mimetype="application/json",
        headers=headers,
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return json_response({"error": message}, status, headers)


def handle(handler: Handler, ctx: AppContext, req: func.HttpRequest) -> func.HttpResponse:
    """Run a handler, turning validation errors into 400s and surprises into logged 500s.

    The handler gets the request without the function key (``?code=``), and only parameters
    that SQL can hold (no NUL, valid Unicode). Logs name the route and method only: never the
    query string (the key) or headers.
    """
    try:
        req = _without_key(req)
        _check_parameters(req)
        return handler(ctx, req)
    except BadRequest as exc:
        return error(400, str(exc))
    except Exception:
        log.exception(
            "unhandled error in HTTP handler",
            extra={"route": _route(req), "method": req.method},
        )
        return error(500, "internal error; see the function's logs")


def _route(req: func.HttpRequest) -> str:
    """The request's path, without the query string (which may hold the function key)."""
    return urlsplit(req.url).path


def _without_key(req: func.HttpRequest) -> func.HttpRequest:
    if KEY_PARAM not in req.params:
        return req
    parts = urlsplit(req.url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != KEY_PARAM])
    return func.HttpRequest(
        req.method,
        urlunsplit(parts._replace(query=query)),
        headers=dict(req.headers),
        params={k: v for k, v in req.params.items() if k != KEY_PARAM},
        route_params=dict(req.route_params),
        body=req.get_body(),
    )


def _check_parameters(req: func.HttpRequest) -> None:
    """Refuse query and route parameters no database can compare: a NUL (PostgreSQL refuses
    it in text) or a lone surrogate (not encodable as UTF-8)."""
    for kind, values in (("route", req.route_params), ("query", req.params)):
        for name, value in values.items():
            shown = repr(name[:40])[1:-1]
            if "\x00" in name or "\x00" in value:
                raise BadRequest(f"{kind} parameter {shown} contains a NUL character")
            try:
                name.encode("utf-8")
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(
                    f"{kind} parameter {shown} is not valid Unicode (a lone surrogate)"
                ) from None


def api_url(req: func.HttpRequest, path: str) -> str:
    """The absolute URL of ``/api/<path>`` on the host that received ``req``."""
    base = req.url.split("/api/", 1)[0] if "/api/" in req.url else ""
    return f"{base}/api/{path}"


def parse_time(name: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be an ISO-8601 string")
    shown = repr(value[:64]) + ("..." if len(value) > 64 else "")
    try:
        return parse_utc(value)
    except ValueError as exc:
        if "outside the years" in str(exc):
            raise BadRequest(f"{name}={shown} is outside the years 1-9999 in UTC") from None
        raise BadRequest(f"{name}={shown} is not an ISO-8601 timestamp") from None


def limit_param(req: func.HttpRequest, default: int = 100) -> int:
    """The ``limit`` query parameter: 1 to ``MAX_LIST`` (``shared.routes.limit`` documents it)."""
    raw = req.params.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"limit={raw!r} is not an integer") from None
    if not 1 <= value <= MAX_LIST:
        raise BadRequest(f"limit must be between 1 and {MAX_LIST}")
    return value


def checked_id(kind: str, value: Any) -> str:
    """A device or sensor id as ingestion accepts it (else a 400 saying why)."""
    try:
        return check_id(kind, value)
    except InvalidReading as exc:
        raise BadRequest(str(exc)) from None


def json_object(req: func.HttpRequest) -> dict[str, Any]:
    """The request's body as a JSON object (no body: ``{}``), else a 400 saying why."""
    raw = req.get_body() or b"{}"
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5,000-digit number
        raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def json_body(req: func.HttpRequest, allowed: set[str]) -> dict[str, Any]:
    """The request's JSON object, with only ``allowed`` fields (else a 400 naming them)."""
    body = json_object(req)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(u[:40] for u in unknown[:10])}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return body


def no_unknown_params(req: func.HttpRequest, allowed: set[str]) -> None:
    unknown = sorted(set(req.params) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown parameter(s): {', '.join(u[:40] for u in unknown[:10])}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
