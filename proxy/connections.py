"""Connection-level limits aiohttp does not have: a cap on open connections, and a
deadline for a request's headers so slowloris clients cannot hold sockets forever."""

from __future__ import annotations

import asyncio
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from blindkey.proxy.errors import ProxyError, error_response, next_request_id


class ConnectionGuard:
    """Counts connections and closes those that take too long to send a request's headers.

    Deadlines are kept in a dict and swept a few times per `header_timeout`, rather than a
    timer armed and cancelled for every request (bench: about 2 µs a request saved).
    """

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.active = 0
        self.refused = 0
        self.timed_out = 0
        self.by_transport: dict[asyncio.BaseTransport, GuardedConnection] = {}
        # Connections waiting for a request's headers, with their deadline.
        self.waiting: dict[GuardedConnection, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _schedule(self) -> None:
        assert self._loop is not None
        interval = min(max(self.header_timeout / 4, 0.01), 1.0)
        self._sweeper = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        expired = [c for c, deadline in self.waiting.items() if deadline <= now]
        for connection in expired:
            del self.waiting[connection]
            connection.expire()
        self._schedule()

    def expect_headers(self, connection: GuardedConnection) -> None:
        if connection not in self.waiting and self._loop is not None:
            self.waiting[connection] = self._loop.time() + self.header_timeout

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        connection = self.by_transport.get(transport) if transport is not None else None
        if connection is not None:
            connection.in_request = True
            self.waiting.pop(connection, None)

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        connection = self.by_transport.get(transport) if transport is not None else None
        if connection is not None:
            connection.in_request = False


class JsonErrorHandler(RequestHandler):
    """aiohttp's protocol, answering requests its parser rejects (too many or too large
    headers, bad framing) with the same JSON error as every other refusal."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400:
            return super().handle_error(request, status, exc, message)
        reason = type(exc).__name__ if exc is not None else "malformed request"
        response = error_response(
            ProxyError("bad_request", f"malformed HTTP request ({reason})"), next_request_id()
        )
        response.force_close()
        return response


class GuardedConnection(asyncio.Protocol):
    """Wraps aiohttp's protocol: counts the connection and times the header phase.

    The header clock starts when bytes of a new request arrive and stops when the
    application sees the request (`ConnectionGuard.request_started`).
    """

    def __init__(self, inner: RequestHandler, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.in_request = False
        self.counted = False

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, base)
        if self.guard.active >= self.guard.max_connections:
            self.guard.refused += 1
            transport.abort()
            return
        self.counted = True
        self.guard.active += 1
        self.transport = transport
        self.guard.by_transport[transport] = self
        self.inner.connection_made(transport)
        self.guard.expect_headers(self)

    def expire(self) -> None:
        if self.transport is not None and not self.in_request:
            self.guard.timed_out += 1
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.in_request:
            self.guard.expect_headers(self)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.waiting.pop(self, None)
        if not self.counted:
            return
        self.guard.active -= 1
        if self.transport is not None:
            self.guard.by_transport.pop(self.transport, None)
        self.inner.connection_lost(exc)


class GuardedSite(web.SockSite):
    def __init__(self, runner: web.BaseRunner, sock: object, guard: ConnectionGuard) -> None:
        super().__init__(runner, sock, backlog=1024)  # type: ignore[arg-type]
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # What web.Server() builds, with the JSON-speaking subclass in its place.
        settings = server._kwargs

        def factory() -> asyncio.Protocol:
            return GuardedConnection(JsonErrorHandler(server, loop=loop, **settings), self.guard)

        self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        self.guard.start(loop)
