"""Every error response of the HTTP API, one JSON shape ``{"error": ..., "hint": ...}`` with its status code, counted
in the ``eptctl_errors`` metric; and the bearer-token check, which answers in the same shape."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# Health checks answer without a token: a load balancer or an orchestrator probes them with none.
OPEN_ROUTES = ("/healthz", "/readyz")
ROUTES_HINT = "routes: POST /v1/predict, GET /v1/adapters, /healthz, /readyz, /metrics, /docs"


class ApiError(Exception):
    """An error response: HTTP ``status``, a one-line ``error``, a ``hint``, optional headers."""

    def __init__(self, status: int, error: str, hint: str = "", headers: dict | None = None):
        super().__init__(error)
        self.status, self.error, self.hint, self.headers = status, error, hint, headers or {}


def error_response(request: Request, err: ApiError) -> JSONResponse:
    """``err`` as the JSON error body, counted by route and status."""
    request.app.state.serving.metrics.errors.labels(request.url.path, str(err.status)).inc()
    return JSONResponse({"error": err.error, "hint": err.hint}, status_code=err.status, headers=err.headers)


def install(app: FastAPI) -> None:
    """Register the error handlers and the bearer-token middleware on ``app`` (whose ``state.serving`` holds the
    metrics and the token)."""
    app.add_exception_handler(ApiError, error_response)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.middleware("http")(_auth)


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    if "json" not in request.headers.get("content-type", ""):
        return error_response(request, ApiError(
            422, "malformed request: the body is not sent as JSON",
            "send the header Content-Type: application/json (curl: -H 'content-type: application/json')"))
    first = err.errors()[0] if err.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return error_response(request, ApiError(
        422, f"malformed request: {where}: {first.get('msg', 'invalid')}",
        'send {"adapter": "TASK@latest", "inputs": ["text", ...]} (see /docs)'))


async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """An unknown route or a wrong method: the same shape as every other error."""
    return error_response(request, ApiError(
        err.status_code, f"{request.method} {request.url.path}: {err.detail}", ROUTES_HINT, dict(err.headers or {})))


async def _auth(request: Request, call_next):
    token = request.app.state.serving.config.token
    if token and request.url.path not in OPEN_ROUTES:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):  # constant time: no timing oracle
            return error_response(request, ApiError(
                401, "missing or wrong bearer token", "send the header Authorization: Bearer TOKEN",
                {"WWW-Authenticate": "Bearer"}))
    return await call_next(request)
