"""Every error response of the HTTP API with its status code, counted in the ``eptctl_errors`` metric by route
template (``unmatched`` for an unknown path, so a scanner's paths never become series) and, for ``/v1/predict``, in
``eptctl_requests`` too; and the bearer-token check, which answers in the same shape.

Two shapes: eptctl's own routes answer ``{"error": ..., "hint": ...}``; the OpenAI-compatible routes
(``OPENAI_ROUTES``) answer OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (the hint ends the message),
whichever layer refused the request (the token check, the body limits, validation, the route)."""

from __future__ import annotations

import hmac
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from eptctl.core.errors import EptctlError
from eptctl.serving.batcher import QueueFull
from eptctl.serving.engine import EngineUnavailable, Unsupported

# Health checks answer without a token: a load balancer or an orchestrator probes them with none.
OPEN_ROUTES = ("/healthz", "/readyz")
ROUTES_HINT = ("routes: POST /v1/predict, GET /v1/adapters, POST /v1/completions, POST /v1/chat/completions, "
               "GET /v1/models, /healthz, /readyz, /metrics, /docs")
PREDICT_ROUTE = "/v1/predict"
OPENAI_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models")
# OpenAI's error ``type`` by status (the Python client picks its exception class by status; ``type`` is for people)
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
UNMATCHED = "unmatched"  # the one metric label of every path no route matches
JSON_HINT = 'send {"adapter": "TASK@latest", "inputs": ["text", ...]} as UTF-8 JSON (see /docs)'
OPENAI_HINT = 'send {"model": "TASK@latest", "prompt": "text"} (chat: "messages") as UTF-8 JSON (see /docs)'


class ApiError(Exception):
    """An error response: HTTP ``status``, a one-line ``error``, a ``hint``, optional headers; ``adapter`` is the
    ``eptctl_requests`` label of a prediction request that failed (``unresolved`` before its references were).
    ``param`` (the request field at fault) and ``code`` (a short machine-readable reason) fill OpenAI's error
    fields on the OpenAI-compatible routes."""

    def __init__(self, status: int, error: str, hint: str = "", headers: dict | None = None,
                 adapter: str = "unresolved", param: str | None = None, code: str | None = None):
        super().__init__(error)
        self.status, self.error, self.hint, self.headers = status, error, hint, headers or {}
        self.adapter, self.param, self.code = adapter, param, code


def route_template(request: Request) -> str:
    """The path template of the route ``request`` is for (``/v1/predict``), matched again when the request was
    answered before routing (by a middleware); ``UNMATCHED`` for a path no route has."""
    route = request.scope.get("route") or _matching(request.app.router.routes, request.scope)
    return getattr(route, "path", None) or UNMATCHED


def _matching(routes, scope):
    """The first route of ``routes`` that matches ``scope``, looking into included routers (FastAPI ≥ 0.120 keeps
    ``include_router``'s routes inside an ``_IncludedRouter``, which has no path of its own; eptctl's routers are
    included without a prefix)."""
    for route in routes:
        if route.matches(scope)[0] == Match.NONE:
            continue
        inner = getattr(route, "original_router", None)
        return _matching(inner.routes, scope) if inner is not None and not hasattr(route, "path") else route
    return None


def error_response(request: Request, err: ApiError) -> JSONResponse:
    """``err`` as the JSON error body, counted by route template and status (and as a prediction request)."""
    metrics, route = request.app.state.serving.metrics, route_template(request)
    metrics.errors.labels(route, str(err.status)).inc()
    if route == PREDICT_ROUTE:  # every answer of the route is a request, whichever layer refused it
        metrics.requests.labels(err.adapter, str(err.status)).inc()
    if route in OPENAI_ROUTES:
        return JSONResponse(openai_error(err), status_code=err.status, headers=err.headers)
    return JSONResponse({"error": err.error, "hint": err.hint}, status_code=err.status, headers=err.headers)


def openai_error(err: ApiError) -> dict:
    """``err`` in OpenAI's error shape (also the payload of an error event in a stream)."""
    message = f"{err.error} (hint: {err.hint})" if err.hint else err.error
    kind = OPENAI_TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": err.param, "code": err.code}}


def install(app: FastAPI) -> None:
    """Register the error handlers and the bearer-token middleware on ``app`` (whose ``state.serving`` holds the
    metrics and the token)."""
    app.add_exception_handler(ApiError, error_response)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, http_error_response)
    app.middleware("http")(_auth)


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    if "json" not in request.headers.get("content-type", ""):
        return error_response(request, ApiError(
            422, "malformed request: the body is not sent as JSON",
            "send the header Content-Type: application/json (curl: -H 'content-type: application/json')"))
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    hint = OPENAI_HINT if route_template(request) in OPENAI_ROUTES else JSON_HINT
    field = next((str(p) for p in first.get("loc", ()) if p != "body"), None)  # OpenAI names the top-level field
    return error_response(request, ApiError(422, f"malformed request: {where}: {first.get('msg', 'invalid')}",
                                            hint, param=field, code="invalid_value"))


async def http_error_response(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """An unknown route, a wrong method, a body too large (``limits.BodyGuard``), too slow, or not UTF-8 JSON: the
    same shape as every other error."""
    headers = dict(err.headers or {})
    if err.status_code == 400 and isinstance(err.__cause__, ValueError):
        # FastAPI parses JSON and answers 400 for what json.JSONDecodeError does not cover (invalid UTF-8)
        return error_response(request, ApiError(422, f"malformed request: the body is not UTF-8 JSON ({err.__cause__})",
                                                JSON_HINT))
    hint = {404: ROUTES_HINT, 405: ROUTES_HINT,
            408: "send the whole body without pauses, or start the server with a larger --timeout-read",
            413: "split the request, or start the server with a larger --max-body-bytes"}.get(
        err.status_code, "see /docs")
    detail = err.detail if err.status_code in (408, 413) else f"{request.method} {request.url.path}: {err.detail}"
    return error_response(request, ApiError(err.status_code, detail, hint, headers))


async def _auth(request: Request, call_next):
    token = request.app.state.serving.config.token
    if token and request.url.path not in OPEN_ROUTES:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):  # constant time: no timing oracle
            return error_response(request, ApiError(
                401, "missing or wrong bearer token", "send the header Authorization: Bearer TOKEN",
                {"WWW-Authenticate": "Bearer"}))
    return await call_next(request)


@contextmanager
def engine_errors():
    """The engine's errors as HTTP answers: queue full or engine unreachable 503 (``Retry-After``), a request it
    cannot honour 400, any other ``EptctlError`` (an input it refuses) 422."""
    try:
        yield
    except (QueueFull, EngineUnavailable) as err:
        raise ApiError(503, err.message, err.hint or "retry in a second", {"Retry-After": "1"},
                       code="engine_overloaded") from None
    except Unsupported as err:
        raise ApiError(400, err.message, err.hint or "", code="unsupported_parameter") from None
    except EptctlError as err:
        raise ApiError(422, err.message, err.hint or "", code="invalid_value") from None
