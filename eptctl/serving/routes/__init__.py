"""The HTTP routes, one ``APIRouter`` per API family, assembled by ``eptctl.serving.app.create_app``:

- ``health``: ``/healthz``, ``/readyz``, ``/metrics`` (probes and Prometheus; the probes need no token)
- ``eptctl_api``: eptctl's own API, ``POST /v1/predict`` and ``GET /v1/adapters``
- ``openai``: the OpenAI-compatible API (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``)

A route reads the server's parts through the ``State`` dependency (``eptctl.serving.state``), never a closure, and
reports an error by raising ``eptctl.serving.errors.ApiError``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from eptctl.serving.state import ServingState


def serving_state(request: Request) -> ServingState:
    """The FastAPI dependency: the ``ServingState`` of the app that received ``request``."""
    return request.app.state.serving


State = Annotated[ServingState, Depends(serving_state)]
