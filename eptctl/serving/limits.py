"""Limits on a request body as it streams in (pure ASGI middleware wrapping ``receive``): its size, and how long
each of its parts may take to arrive. A body over the limit is never read whole nor parsed; a client that stalls or
trickles its body cannot hold a connection and a handler forever. (The head's deadline is
``eptctl.serving.protocol``'s.)

Starlette's ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``) counts the same way, but answers a
``Content-Length`` over the limit with its own plain-text 413 whatever the app sends; the API promises its JSON
error shape on every status, hence this middleware.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eptctl.serving.errors import http_error_response


class BodyTooLarge(HTTPException):
    """The request body passed the limit (HTTP 413; the connection is closed: the rest is never read)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes",
                         headers={"Connection": "close"})


class BodyGuard:
    """A ``Content-Length`` over ``max_bytes`` is answered 413 at once, before any byte of the body is read;
    otherwise ``receive`` counts the body's bytes (whatever the framing, chunked included) and raises
    ``BodyTooLarge`` once past ``max_bytes``, and raises ``HTTPException(408)`` when a part of the body does not
    arrive within ``timeout_s`` seconds. Both are answered by the app's handler for ``HTTPException``. After the body's
    last part, ``receive`` waits unbounded again (it then only reports a disconnect)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = await http_error_response(Request(scope, receive), BodyTooLarge(self.max_bytes))
            return await response(scope, receive, send)
        received, body_done = 0, False

        async def guarded_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"the request body stalled for {self.timeout_s:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, guarded_receive, send)
