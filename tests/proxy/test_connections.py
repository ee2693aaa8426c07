"""Connections a local process can hoard: idle keep-alives, half-sent bodies. None of them
may lock agents out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from blindkey.proxy.connections import MIN_IDLE_TO_EVICT
from tests.proxy.conftest import Env, SkewedClock, open_env

HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def limits(**values: Any) -> Any:
    def configure(document: Any) -> None:
        section = toml_table(document, "limits")
        for key, value in values.items():
            section[key] = value

    return configure


async def keep_alive(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that made one request, got its answer, and now sits idle."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEALTH)
    await reader.readuntil(b'{"status": "ok"}')
    return reader, writer


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except TimeoutError:
        return False


async def agent_call(env: Env) -> int:
    # A new connection for each call, as an agent starting up would open.
    async with env.session.get(
        env.url,
        headers={**env.headers(), "X-AS-Inject-Bearer": "GITHUB_TOKEN", "Connection": "close"},
    ) as response:
        await response.read()
        return response.status


@pytest.fixture
async def idle_env(home: Paths) -> AsyncIterator[Env]:
    async with open_env(home, limits(keepalive_idle_timeout="300ms")) as env:
        yield env


async def test_an_idle_keep_alive_connection_is_closed_after_its_deadline(idle_env: Env) -> None:
    reader, writer = await keep_alive(idle_env.server.port)
    began = time.monotonic()
    assert await closed(reader, 3)
    assert 0.25 < time.monotonic() - began < 2
    assert idle_env.server.guard is not None and idle_env.server.guard.timed_out == 1
    writer.close()


async def test_a_busy_keep_alive_connection_is_not_closed(idle_env: Env) -> None:
    reader, writer = await keep_alive(idle_env.server.port)
    for _ in range(6):  # 6 requests 100 ms apart outlive one idle deadline of 300 ms
        await asyncio.sleep(0.1)
        writer.write(HEALTH)
        await reader.readuntil(b'{"status": "ok"}')
    writer.close()


async def test_at_the_cap_the_idlest_connection_makes_room(home: Paths) -> None:
    clock = SkewedClock()
    async with open_env(home, limits(max_connections=4), clock=clock) as env:
        guard = env.server.guard
        assert guard is not None
        idle = [await keep_alive(env.server.port) for _ in range(4)]
        clock.advance(MIN_IDLE_TO_EVICT)  # older than the freshness margin
        assert await agent_call(env) == 200
        assert guard.evicted == 1 and guard.refused == 0
        # The first to go idle was the one closed; the others still answer.
        assert await closed(idle[0][0], 1)
        for reader, writer in idle[1:]:
            writer.write(HEALTH)
            await reader.readuntil(b'{"status": "ok"}')
        for _, writer in idle:
            writer.close()


@pytest.mark.timeout(180)
async def test_two_thousand_idle_keep_alives_do_not_lock_agents_out(home: Paths) -> None:
    async with open_env(home) as env:  # default limits: 1,024 connections, 15 s idle
        guard = env.server.guard
        assert guard is not None
        hoard: list[asyncio.StreamWriter] = []
        answered = 0
        for index in range(2000):
            try:
                _, writer = await keep_alive(env.server.port)
                hoard.append(writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # evicted or refused while the hoard was too fresh to evict
            if index % 100 == 99:
                assert await agent_call(env) == 200
                answered += 1
        assert answered == 20
        assert guard.active <= guard.max_connections
        assert guard.evicted > 900  # the hoard beyond the cap made room by closing its own
        for writer in hoard:
            writer.close()


async def test_a_half_sent_body_for_injection_is_cut_at_the_body_deadline(home: Paths) -> None:
    async with open_env(home, limits(body_read_timeout="300ms")) as env:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
        head = (
            "POST /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-AS-Agent-Token: {env.token}\r\nX-AS-Target-URL: {env.base}/echo\r\n"
            "X-AS-Inject-Body-auth.token: GITHUB_TOKEN\r\nContent-Length: 100\r\n\r\n"
        )
        writer.write(head.encode() + b'{"partial": ')
        began = time.monotonic()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert time.monotonic() - began < 2
        assert answer.startswith(b"HTTP/1.1 400") and b"Connection: close" in answer
        length = int(answer.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = orjson.loads(await reader.readexactly(length))
        assert body["error"] == "bad_request" and "body_read_timeout" in body["message"]
        writer.close()
