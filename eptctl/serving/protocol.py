"""uvicorn's h11 protocol with a deadline on a request's head: a client that opens a connection and sends part of a
request line or headers, then stalls (slowloris), is disconnected after ``timeout_read_s``. uvicorn times out only
idle keep-alive connections (``timeout_keep_alive``, after a response); a connection that never completes a head
would be held forever. The body's parts are timed by ``eptctl.serving.limits`` (the ASGI side)."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


def with_head_timeout(timeout_s: float) -> type[H11Protocol]:
    """An ``H11Protocol`` class (for ``uvicorn.Config(http=...)``) that closes a connection whose request head has
    not fully arrived ``timeout_s`` seconds after its first byte (or after the connection was opened)."""

    class HeadTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            between = self._between_requests()
            super().data_received(data)
            if not self._between_requests():
                self._disarm()  # a head arrived: the request is the app's now
            elif between and self._head_timer is None and not self.transport.is_closing():
                self._arm()  # the first bytes of the next request on a kept-alive connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expired(self) -> None:
            self._head_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutH11Protocol
