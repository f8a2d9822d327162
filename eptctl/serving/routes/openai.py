"""The OpenAI-compatible API: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``.

No routes yet; the issue that adds them puts them on ``router`` here (the app factory already includes it), reads the
server through the ``State`` dependency, and answers errors by raising ``ApiError`` (OpenAI's own error shape, if it
is wanted, belongs to a handler installed for these routes only).
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["openai"])
