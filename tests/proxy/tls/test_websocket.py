"""A WebSocket upgrade to an intercepted host: the upgrade gets the checks and the swap (a
foreign placeholder is refused before the upstream is dialled), then frames go both ways,
and a value the upstream sends back in a frame arrives as [REDACTED:NAME]."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from blindkey.config.edit import string_array, toml_table
from tests.proxy.conftest import SECRET
from tests.proxy.test_attack_dos import audit_records
from tests.proxy.tls.conftest import Mode
from tests.upstream import HITS

SEEN = web.AppKey("seen", list)


async def echo_socket(request: web.Request) -> web.StreamResponse:
    authorization = request.headers.get("Authorization", "")
    request.app[SEEN].append(authorization)
    if authorization != f"Bearer {SECRET}":
        return web.Response(status=401)
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    await socket.send_str(f"you sent {authorization}")
    async for message in socket:
        if message.type == aiohttp.WSMsgType.TEXT:
            await socket.send_str(f"echo: {message.data}")
    return socket


async def away(request: web.Request) -> web.StreamResponse:
    request.app[SEEN].append(request.headers.get("Authorization", ""))
    port = request.query["to"]
    raise web.HTTPFound(f"https://127.0.0.1:{port}/ws")


@pytest.fixture
async def socket_upstream(mode: Mode) -> AsyncIterator[tuple[int, web.Application]]:
    """A WebSocket upstream over TLS that GITHUB_TOKEN is bound to."""
    app = web.Application()
    app[SEEN] = []
    app.router.add_get("/ws", echo_socket)
    app.router.add_get("/away", away)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=mode.context).start()
    port = int(runner.addresses[0][1])

    def bind(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].append(f"https://127.0.0.1:{port}")
        toml_table(document, "secrets", "GITHUB_TOKEN")["hosts"] = string_array(
            [f"https://127.0.0.1:{mode.bound_port}", f"https://127.0.0.1:{port}"]
        )

    mode.env.configure(bind)
    await mode.env.server.reload()
    try:
        yield port, app
    finally:
        await runner.cleanup()


def client(mode: Mode) -> tuple[aiohttp.ClientSession, dict[str, Any]]:
    trust = ssl.create_default_context(cafile=str(mode.env.paths.ca_cert))
    basic = base64.b64encode(f"agent:{mode.env.token}".encode()).decode()
    options = {"proxy": mode.proxy, "proxy_headers": {"Proxy-Authorization": f"Basic {basic}"},
               "ssl": trust}  # fmt: skip
    return aiohttp.ClientSession(), options


async def test_frames_go_both_ways_and_the_value_comes_back_redacted(
    mode: Mode, socket_upstream: tuple[int, web.Application]
) -> None:
    socket_port, _ = socket_upstream
    held = mode.placeholders["GITHUB_TOKEN"]
    session, options = client(mode)
    async with session, session.ws_connect(
        f"wss://127.0.0.1:{socket_port}/ws", headers={"Authorization": f"Bearer {held}"},
        **options,
    ) as socket:  # fmt: skip
        first = await socket.receive_str(timeout=10)
        assert first == "you sent Bearer [REDACTED:GITHUB_TOKEN]"
        await socket.send_str(f"hello {held}")
        assert await socket.receive_str(timeout=10) == f"echo: hello {held}"
    record = await upgrade_record(mode)
    assert record["secrets"] == ["GITHUB_TOKEN"] and record["redactions"] >= 1


async def upgrade_record(mode: Mode) -> dict[str, Any]:
    """The upgrade's record, written when the relay has ended (after the client's close)."""
    async with asyncio.timeout(10):
        while True:
            await mode.env.server.audit.flush()
            for record in audit_records(mode.env.paths.audit_dir):
                if record.get("via") == "connect" and record.get("status") == 101:
                    return record
            await asyncio.sleep(0.02)


async def test_a_foreign_placeholder_on_the_upgrade_is_refused(
    mode: Mode, socket_upstream: tuple[int, web.Application]
) -> None:
    socket_port, app = socket_upstream
    foreign = mode.placeholders["STRIPE_KEY"]
    session, options = client(mode)
    async with session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(
                f"wss://127.0.0.1:{socket_port}/ws",
                headers={"Authorization": f"Bearer {foreign}"}, **options,
            )  # fmt: skip
    assert refused.value.status == 403
    assert app[SEEN] == []  # the upstream was never dialled


async def test_a_redirect_answering_the_upgrade_is_not_followed(
    mode: Mode, socket_upstream: tuple[int, web.Application]
) -> None:
    """The upgrade carries the value: a redirect elsewhere would take it along."""
    socket_port, app = socket_upstream
    held = mode.placeholders["GITHUB_TOKEN"]
    session, options = client(mode)
    elsewhere = len(mode.free.app[HITS])
    async with session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(
                f"wss://127.0.0.1:{socket_port}/away?to={mode.free_port}",
                headers={"X-Api-Key": held}, **options,
            )  # fmt: skip
    assert refused.value.status == 502
    assert app[SEEN] == [""] and len(mode.free.app[HITS]) == elsewhere
