"""A deadline on each part of a request body (pure ASGI middleware): a client that sends a head and then stalls
its body, or trickles it, gets 408 instead of holding a connection and a handler forever. The head's deadline is
``eptctl.serving.protocol``'s; the body's size limit is Starlette's ``RequestBodyLimitMiddleware`` (FastAPI's
``max_body_size``)."""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyReadTimeout:
    """Wraps ``receive``: until the body's last part has arrived, each ``http.request`` message must arrive within
    ``timeout_s`` seconds, else ``HTTPException(408)`` (answered by the app's handler, connection closed). After the
    body, ``receive`` waits unbounded again (it then only reports a disconnect)."""

    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"the request body stalled for {self.timeout_s:g} s",
                                    headers={"Connection": "close"}) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)
