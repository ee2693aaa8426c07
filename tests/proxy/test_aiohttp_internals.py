"""The aiohttp internals the proxy's front reaches into, each named and checked for what
proxy/connections.py and proxy/request/edge.py rely on. An aiohttp upgrade that moves one
fails here, by name, before it fails as a hung socket or a plain-text 500 somewhere else.

Relied on:
- `web.Server._kwargs`: the settings web.Server() gives aiohttp's protocol
  (`RequestHandler(server, loop=..., **_kwargs)` is what `Server.__call__` builds);
  GuardedSite builds the same with JsonErrorHandler in its place.
- `RequestHandler.__init__(manager, *, loop, **settings)`, and `handle_error(request,
  status, exc, message)` called with status 400 for a request the parser rejects.
- `BaseSite._runner`, `._backlog`, `._server` and `SockSite._sock`; `BaseSite.start`
  registers the site without listening, `BaseSite.stop` closes `_server`.
- `StreamWriter.output_size`: counts what was written, and is set back to 0 after the
  interim `100 Continue` so that it is not counted as the answer's start.
- `RequestHandler.transport` set to None before `connection_lost(None)`: the handler lets go
  of a connection without closing it (GuardedConnection hands a CONNECT to proxy mode's
  door this way), and its task, cancelled, does not close it on the way out either.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from blindkey.proxy.connections import ConnectionGuard, JsonErrorHandler
from blindkey.proxy.request.edge import CONTINUE
from blindkey.proxy.site import GuardedSite

UPGRADED = f"aiohttp {aiohttp.__version__} changed an internal blindkey relies on"
SETTINGS = {
    "access_log": None,
    "keepalive_timeout": 75.0,
    "max_line_size": 4096,
    "max_field_size": 4096,
    "max_headers": 50,
}


async def ok(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


async def test_server_keeps_the_protocol_settings_in__kwargs() -> None:
    server = web.Server(ok, handler_cancellation=True, **SETTINGS)  # type: ignore[arg-type]
    assert getattr(server, "_kwargs", None) == SETTINGS, UPGRADED
    # What the server builds for a connection: aiohttp's own protocol, from those settings.
    assert type(server()) is RequestHandler, UPGRADED


async def test_the_protocol_is_built_from_the_server_its_loop_and_the_settings() -> None:
    server = web.Server(ok, **SETTINGS)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    signature = inspect.signature(RequestHandler.__init__)
    signature.bind(object(), server, loop=loop, **server._kwargs)  # raises if changed
    handler = JsonErrorHandler(server, loop=loop, refusals=None, **server._kwargs)
    assert handler.refusals is None and handler.transport is None, UPGRADED


def test_handle_error_takes_request_status_exception_and_message() -> None:
    parameters = list(inspect.signature(RequestHandler.handle_error).parameters)
    assert parameters == ["self", "request", "status", "exc", "message"], UPGRADED


def test_sites_keep_runner_backlog_server_and_socket_in_these_slots() -> None:
    assert {"_runner", "_backlog", "_server"} <= set(web.BaseSite.__slots__), UPGRADED
    assert "_sock" in web.SockSite.__slots__, UPGRADED


@pytest.fixture
async def front() -> AsyncIterator[tuple[int, list[int]]]:
    """A bare front: web.Server in a GuardedSite on a real socket, no broker. The handler
    writes `100 Continue` as proxy/request/edge.py does and notes the writer's count."""
    counted: list[int] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        assert request.writer is not None
        await request.writer.write(CONTINUE)
        counted.append(request.writer.output_size)
        request.writer.output_size = 0
        counted.append(request.writer.output_size)
        return web.Response(text="ok")

    server = web.Server(handler, handler_cancellation=True, **SETTINGS)  # type: ignore[arg-type]
    runner = web.ServerRunner(server)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    guard = ConnectionGuard(16, 5.0)
    site = GuardedSite(runner, sock, guard)
    await site.start()
    try:
        assert site in runner.sites, UPGRADED  # BaseSite.start registered it
        assert site._server is not None, UPGRADED  # the listener GuardedSite made
        yield sock.getsockname()[1], counted
    finally:
        guard.close()
        await runner.cleanup()
        assert site._server is None or not site._server.is_serving(), UPGRADED


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_a_request_the_parser_rejects_reaches_handle_error_as_a_400(
    front: tuple[int, list[int]],
) -> None:
    port, _ = front
    too_long = b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await exchange(port, too_long)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", UPGRADED
    assert orjson.loads(body)["error"] == "bad_request", UPGRADED  # JsonErrorHandler's


async def test_the_writer_counts_what_was_written_and_takes_a_reset(
    front: tuple[int, list[int]],
) -> None:
    port, counted = front
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await exchange(port, request)
    assert counted == [len(CONTINUE), 0], UPGRADED
    assert answer.startswith(CONTINUE + b"HTTP/1.1 200"), UPGRADED
    assert answer.endswith(b"ok")


async def let_go(handler: RequestHandler, *, detach: bool) -> asyncio.Transport:
    """A handler on a real connection, let go of as GuardedConnection._sniff does (or, with
    detach=False, without first taking its transport away); its task finished."""
    near, far = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(lambda: handler, near)
    task = getattr(handler, "_task_handler", None)
    assert isinstance(task, asyncio.Task), UPGRADED  # connection_made starts the handler's task
    if detach:
        handler.transport = None
    handler.connection_lost(None)
    await asyncio.wait([task])
    far.close()
    return transport


async def test_a_handler_let_go_without_its_transport_leaves_the_connection_open() -> None:
    server = web.Server(ok, **SETTINGS)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    handler = JsonErrorHandler(server, loop=loop, refusals=None, **server._kwargs)
    transport = await let_go(handler, detach=True)
    try:
        assert not transport.is_closing(), UPGRADED
    finally:
        transport.close()
    # The check can fail: a handler let go of while it still holds the transport closes it.
    holding = JsonErrorHandler(server, loop=loop, refusals=None, **server._kwargs)
    assert (await let_go(holding, detach=False)).is_closing(), UPGRADED
