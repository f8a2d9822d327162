"""The HTTP API: ``POST /v1/predict``, ``GET /v1/adapters``, ``/healthz``, ``/readyz``, ``/metrics``; OpenAPI at
``/docs``. Every error is a JSON body ``{"error": ..., "hint": ...}`` with its status code:
422 malformed request, 404 unknown adapter, 409 adapter of another backbone, 413 too many inputs or too long a text,
503 queue full (with ``Retry-After``) or not ready, 401 missing or wrong bearer token.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager

from pydantic import BaseModel, ConfigDict, Field

from eptctl import __version__
from eptctl.core.errors import EptctlError
from eptctl.data.text import clean_inputs
from eptctl.serving.adapters import AdapterCache, AdapterNotFound, BackboneMismatch
from eptctl.serving.batcher import Batcher, QueueFull
from eptctl.serving.config import ServeConfig
from eptctl.serving.metrics import ServeMetrics


class Input(BaseModel):
    """One input: a text, an optional second text (pair tasks), and optionally its own adapter (mixed requests)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt or unsupported field is a 422, never silently ignored

    text: str
    text_pair: str | None = None
    adapter: str | None = None


class PredictRequest(BaseModel):
    """``adapter`` for every input, or an ``adapter`` on each input (mixed-task requests). Generation rows decode
    greedily with their adapter's own budget; decoding options are a command-line feature (``eptctl predict``)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(default=None, examples=["rt-polarity@latest"])
    inputs: list[str | Input] = Field(examples=[["A triumph.", {"text": "Dull.", "adapter": "rt-polarity@1"}]])


class ApiError(Exception):
    """An error response: HTTP ``status``, a one-line ``error``, a ``hint``, optional headers."""

    def __init__(self, status: int, error: str, hint: str = "", headers: dict | None = None):
        super().__init__(error)
        self.status, self.error, self.hint, self.headers = status, error, hint, headers or {}


def create_app(registry, backbone, config: ServeConfig = ServeConfig()):
    """The FastAPI application serving ``registry``'s adapters on ``backbone`` (started by the lifespan: the
    batcher thread; stopped on shutdown after it has answered every queued request)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    metrics = ServeMetrics()
    cache = AdapterCache(registry, backbone, config.max_adapters, config.resolve_ttl_s)
    batcher = Batcher(backbone, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                      max_queue=config.max_queue, batching=config.batching, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)  # uvicorn has drained the connections: finish what is queued

    app = FastAPI(title="eptctl serve", version=__version__, lifespan=lifespan,
                  description="Every task's soft prompt on one frozen backbone, batched across adapters.")
    app.state.cache, app.state.batcher, app.state.metrics = cache, batcher, metrics

    def error_response(route: str, err: ApiError) -> JSONResponse:
        metrics.errors.labels(route, str(err.status)).inc()
        return JSONResponse({"error": err.error, "hint": err.hint}, status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return error_response(request.url.path, err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        if "json" not in request.headers.get("content-type", ""):
            return error_response(request.url.path, ApiError(
                422, "malformed request: the body is not sent as JSON",
                "send the header Content-Type: application/json (curl: -H 'content-type: application/json')"))
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error_response(request.url.path, ApiError(
            422, f"malformed request: {where}: {first.get('msg', 'invalid')}",
            'send {"adapter": "TASK@latest", "inputs": ["text", ...]} (see /docs)'))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):  # unknown route, wrong method: same shape
        return error_response(request.url.path, ApiError(
            err.status_code, f"{request.method} {request.url.path}: {err.detail}",
            "routes: POST /v1/predict, GET /v1/adapters, /healthz, /readyz, /metrics, /docs", dict(err.headers or {})))

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if config.token and request.url.path not in ("/healthz", "/readyz"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
                return error_response(request.url.path, ApiError(
                    401, "missing or wrong bearer token", "send the header Authorization: Bearer TOKEN",
                    {"WWW-Authenticate": "Bearer"}))
        return await call_next(request)

    @app.get("/healthz")
    async def healthz():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Readiness: the backbone is loaded and the batcher runs."""
        if not batcher.alive:
            raise ApiError(503, "not ready: the batcher is not running", "wait, or check the server log")
        return {"status": "ready", "backbone": backbone.name}

    @app.get("/metrics")
    async def prometheus():
        """Prometheus text format."""
        metrics.loaded_adapters.set(len(cache.loaded()))
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/adapters")
    async def adapters():
        """The loaded (materialized) adapters: reference, task, labels, backbone, metrics."""
        return {"backbone": backbone.name, "adapters": [_describe(s) for s in cache.loaded()]}

    @app.post("/v1/predict")
    async def predict(body: PredictRequest):
        """One output per input: ``adapter``, ``text``, ``truncated`` and, by task type, ``label`` with every
        label's ``scores``, the generated ``output``, or the ``value``."""
        started = time.perf_counter()
        label = "unresolved"  # a label per registry adapter, never per string a client sends
        try:
            rows = await _rows(body, cache, config)
            refs = {servable.record.ref for servable, _, _ in rows}
            label = refs.pop() if len(refs) == 1 else "mixed"
            outputs = await batcher.submit(rows)
        except QueueFull as err:
            metrics.requests.labels(label, "503").inc()
            raise ApiError(503, err.message, err.hint, {"Retry-After": "1"}) from None
        except ApiError as err:
            metrics.requests.labels(label, str(err.status)).inc()
            raise
        except EptctlError as err:  # e.g. an empty text after normalisation
            metrics.requests.labels(label, "422").inc()
            raise ApiError(422, err.message, err.hint or "") from None
        metrics.requests.labels(label, "200").inc()
        metrics.latency.observe(time.perf_counter() - started)
        return {"outputs": outputs}

    return app


async def _rows(body: PredictRequest, cache: AdapterCache, config: ServeConfig) -> list:
    """(servable, text, text_pair) per input, every limit and reference checked first."""
    if not body.inputs:
        raise ApiError(422, "malformed request: inputs: the list is empty", "send at least one input")
    if len(body.inputs) > config.max_inputs:
        raise ApiError(413, f"{len(body.inputs)} inputs in one request; the limit is {config.max_inputs}",
                       "split the request, or start the server with a larger --max-inputs")
    items = [Input(text=i) if isinstance(i, str) else i for i in body.inputs]
    for n, item in enumerate(items, start=1):
        longest = max(len(item.text), len(item.text_pair or ""))
        if longest > config.max_text_chars:
            raise ApiError(413, f"input {n} has {longest} characters; the limit is {config.max_text_chars}",
                           "shorten it, or start the server with a larger --max-text-chars")
        if not (item.adapter or body.adapter):
            raise ApiError(422, f"malformed request: input {n} names no adapter",
                           'give "adapter" for the request, or on every input')
    try:  # the one normalisation of every text; an empty one is refused here, named by its position
        texts = clean_inputs([(item.text, item.text_pair) for item in items], where="input")
    except EptctlError as err:
        raise ApiError(422, err.message, err.hint or "") from None
    items = [item.model_copy(update={"text": t, "text_pair": p}) for item, (t, p) in zip(items, texts)]
    refs = {item.adapter or body.adapter for item in items}
    try:
        resolved = {ref: await asyncio.to_thread(cache.get, ref) for ref in refs}
    except AdapterNotFound as err:
        raise ApiError(404, err.message, err.hint or "") from None
    except BackboneMismatch as err:
        raise ApiError(409, err.message, err.hint or "") from None
    from eptctl.workflows.inference import check_pair

    try:  # a pair where the task takes one text (or a three-column task) fails this request, not its batch
        for n, item in enumerate(items, start=1):
            check_pair(resolved[item.adapter or body.adapter], item.text_pair, f"input {n}")
    except EptctlError as err:
        raise ApiError(422, err.message, err.hint or "") from None
    return [(resolved[item.adapter or body.adapter], item.text, item.text_pair) for item in items]


def _describe(servable) -> dict:
    rec = servable.record
    return {"ref": rec.ref, "id": rec.id, "task": rec.task, "task_type": servable.spec.task_type,
            "method": rec.method, "labels": list(servable.spec.labels),
            "backbone": rec.backbone.name, "aliases": list(rec.aliases),
            "metrics": {f"{m.split}:{m.name}": m.value for m in rec.metrics if m.step is None}}
