"""The listening site: aiohttp's, with blindkey's connection in front of its protocol (the
limits and deadlines of connections.py, JSON answers for requests aiohttp's parser rejects,
and proxy mode's door for a connection that opens with CONNECT)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from blindkey.audit.coalesce import Coalescer
from blindkey.proxy.connections import ConnectionGuard, GuardedConnection, JsonErrorHandler

# Proxy mode's door for a connection that opened with CONNECT, given how to make the
# aiohttp protocol that reads the requests inside an intercepted tunnel.
Doors = Callable[["GuardedConnection", Callable[[], RequestHandler]], asyncio.Protocol]


class GuardedSite(web.SockSite):
    def __init__(
        self,
        runner: web.BaseRunner,
        sock: object,
        guard: ConnectionGuard,
        refusals: Coalescer | None = None,
        doors: Doors | None = None,
    ) -> None:
        super().__init__(runner, sock, backlog=1024)  # type: ignore[arg-type]
        self.guard = guard
        self.refusals = refusals
        self.doors = doors

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # What web.Server() builds, with the JSON-speaking subclass in its place.
        settings = server._kwargs

        def handler() -> RequestHandler:
            return JsonErrorHandler(server, loop=loop, refusals=self.refusals, **settings)

        doors = self.doors

        def door(connection: GuardedConnection) -> asyncio.Protocol:
            assert doors is not None
            return doors(connection, handler)

        def factory() -> asyncio.Protocol:
            return GuardedConnection(handler(), self.guard, door if doors is not None else None)

        self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        self.guard.start(loop)
