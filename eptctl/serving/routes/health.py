"""Health and metrics: liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from eptctl.serving.errors import ApiError
from eptctl.serving.routes import State

router = APIRouter()


@router.get("/healthz")
async def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State):
    """Readiness: the backbone is loaded and the engine runs (the local batcher's thread, or a reachable remote)."""
    if not state.engine.alive:
        raise ApiError(503, f"not ready: the {state.engine.name} engine is not running", "wait, or check the server log")
    return {"status": "ready", "backbone": state.engine.backbone_name, "engine": state.engine.name}


@router.get("/metrics")
async def prometheus(state: State):
    """Prometheus text format; ``eptctl_loaded_adapters`` counts what ``/v1/adapters`` lists (removed ones evicted)."""
    state.metrics.loaded_adapters.set(len(await asyncio.to_thread(state.cache.servable)))
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
