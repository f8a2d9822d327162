"""The HTTP app factory: one FastAPI application from the routers of each API family (``eptctl.serving.routes``),
the JSON error handlers and the bearer-token check (``errors``), and the server's shared parts (``state``).

Routes: ``POST /v1/predict``, ``GET /v1/adapters``, ``/healthz``, ``/readyz``, ``/metrics``; the OpenAI-compatible
``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``; OpenAPI at ``/docs``.
Every error is a JSON body with its status code (eptctl's routes: ``{"error": ..., "hint": ...}``; the OpenAI routes:
``{"error": {"message", "type", "param", "code"}}``): 422 malformed request (or not UTF-8 JSON), 400 a field the
OpenAI routes cannot honour, 404 unknown adapter, 409 adapter of another backbone, 413 too many inputs, too long a
text or too large a body, 408 a body that stalled, 503 queue full (with ``Retry-After``) or not ready, 401 missing or
wrong bearer token.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from eptctl import __version__
from eptctl.serving.config import ServeConfig


def create_app(registry, backbone, config: ServeConfig = ServeConfig(), engine=None):
    """The FastAPI application serving ``registry``'s adapters on ``backbone`` (started by the lifespan: the
    batcher thread; stopped on shutdown after it has answered every queued request). Its parts are on
    ``app.state.serving`` (a ``ServingState``); ``engine``: a remote engine (``serving.engines``), else the local
    one."""
    from fastapi import FastAPI

    from eptctl.serving import errors
    from eptctl.serving.limits import BodyGuard
    from eptctl.serving.routes import eptctl_api, health, openai
    from eptctl.serving.state import ServingState

    app = FastAPI(title="eptctl serve", version=__version__, lifespan=_lifespan,
                  description="Every task's soft prompt on one frozen backbone, batched across adapters.")
    app.state.serving = ServingState.build(registry, backbone, config, engine)
    # added before the token check, so it sits inside it: a BaseHTTPMiddleware reads through a task group, which
    # would wrap the 408 or 413 in an ExceptionGroup that FastAPI's body parsing answers with 400
    app.add_middleware(BodyGuard, max_bytes=config.body_limit, timeout_s=config.timeout_read_s)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(eptctl_api.router)
    app.include_router(openai.router)
    return app


@asynccontextmanager
async def _lifespan(app):
    engine = app.state.serving.engine
    engine.start()
    app.state.serving.metrics.generation.watch(engine)  # running and waiting, read from the engine at each scrape
    yield
    await asyncio.to_thread(engine.stop)  # uvicorn has drained the connections: finish what is queued
