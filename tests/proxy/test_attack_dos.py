"""Issue 23, item 9a: any local process, with no token, tries to take agents offline by
holding the proxy's connection slots with half-sent request heads."""

from __future__ import annotations

import asyncio
import time

from blindkey.config.paths import Paths
from tests.proxy.conftest import Env, open_env
from tests.proxy.test_connections import agent_call, closed, limits

HALF_HEAD = b"GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nX-AS-Target-URL: http://x/\r\n"
CAP = 32


async def half_sent_heads(port: int, count: int) -> list[asyncio.StreamWriter]:
    """`count` connections that each began a request head and never finish it."""
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionError:
            continue
        writer.write(HALF_HEAD)
        writers.append(writer)
    return writers


async def tokened_keep_alive(env: Env) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An agent's connection that made one call with its token and stays open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    assert (await one_call(env, reader, writer)).startswith(b"HTTP/1.1 200")
    return reader, writer


async def one_call(env: Env, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(
        (
            "GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-AS-Agent-Token: {env.token}\r\nX-AS-Target-URL: {env.base}/echo\r\n"
            "X-AS-Inject-Bearer: GITHUB_TOKEN\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return head


async def test_half_sent_heads_beyond_the_cap_do_not_lock_a_tokened_agent_out(
    home: Paths,
) -> None:
    # A header deadline far beyond the test: only the eviction of heads can make room.
    async with open_env(home, limits(max_connections=CAP, header_read_timeout="60s")) as env:
        guard = env.server.guard
        assert guard is not None
        hoard = await half_sent_heads(env.server.port, CAP + 16)
        began = time.monotonic()
        assert await agent_call(env) == 200
        assert time.monotonic() - began < 5
        assert guard.refused == 0 and guard.evicted >= 16
        assert guard.active <= guard.max_connections
        for writer in hoard:
            writer.close()


async def test_an_agent_connection_keeps_its_slot_while_heads_flood_in(home: Paths) -> None:
    async with open_env(home, limits(max_connections=CAP, header_read_timeout="60s")) as env:
        guard = env.server.guard
        assert guard is not None
        reader, writer = await tokened_keep_alive(env)
        await asyncio.sleep(0.3)  # older than the freshness margin: evictable by age alone
        hoard = await half_sent_heads(env.server.port, CAP * 3)
        # The anonymous heads made room for each other; the agent's idle connection stayed.
        head = await one_call(env, reader, writer)
        assert head.startswith(b"HTTP/1.1 200")
        assert guard.evicted >= CAP * 2
        writer.close()
        for held in hoard:
            held.close()


async def test_a_silent_connection_then_a_trickle_is_cut_one_deadline_after_accept(
    home: Paths,
) -> None:
    async with open_env(home, limits(header_read_timeout="1s")) as env:
        reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
        began = time.monotonic()
        await asyncio.sleep(0.7)  # silent for most of the deadline, then one byte at a time
        cut = False
        for byte in HALF_HEAD:
            writer.write(bytes([byte]))
            if await closed(reader, 0.05):
                cut = True
                break
        # Before: the clock restarted at the first byte, so the head had 1.7 s.
        assert cut and time.monotonic() - began < 1.55
        writer.close()
