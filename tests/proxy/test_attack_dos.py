"""Issue 23, item 9: any local process, with no token, tries to take agents offline by
holding the proxy's connection slots with half-sent request heads (9a), or by filling the
audit's disk with the records of its refused calls until the fail-closed audit refuses
every agent (9b)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from blindkey.audit.coalesce import BUDGET, URL_LIMIT
from blindkey.audit.store import audit_files
from blindkey.audit.summary import summarise
from blindkey.audit.verify import verify
from blindkey.config.paths import Paths
from blindkey.proxy.connections import MIN_IDLE_TO_EVICT
from blindkey.proxy.server import ProxyServer
from tests.audit.tmpfs import small_tmpfs
from tests.proxy.conftest import Env, SkewedClock, open_env
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
    clock = SkewedClock()
    limited = limits(max_connections=CAP, header_read_timeout="60s")
    async with open_env(home, limited, clock=clock) as env:
        guard = env.server.guard
        assert guard is not None
        reader, writer = await tokened_keep_alive(env)
        clock.advance(MIN_IDLE_TO_EVICT)  # older than the freshness margin: evictable by age
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


def audit_records(audit_dir: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in audit_files(audit_dir)
        if path.exists()
        for line in path.read_bytes().splitlines()
    ]


def short_interval(server: ProxyServer) -> None:
    server.refusal_interval = INTERVAL


INTERVAL = 0.5


@pytest.mark.timeout(120)
async def test_a_flood_of_unauthenticated_refusals_does_not_fill_the_audit_disk(
    home: Paths,
) -> None:
    flood = 3000  # 2 KB URLs: about 7 MB of records, one by one, on a disk of 512 KB
    with small_tmpfs(home.audit_dir, "512k"):
        async with open_env(home, prepare=short_interval) as env:
            long_url = f"{env.base}/" + "a" * 2000
            anonymous = {"X-AS-Target-URL": long_url, "X-AS-Inject-Bearer": "GITHUB_TOKEN"}
            refused = 0
            began = time.monotonic()
            for _ in range(flood):
                async with env.session.get(env.url, headers=anonymous) as r:
                    await r.read()
                    refused += r.status == 401
            intervals = (time.monotonic() - began) / INTERVAL + 2
            assert refused == flood
            status, _, body = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
            assert status == 200, body
            assert env.server.audit.available
        records = audit_records(home.audit_dir)
        verdict = verify(home.audit_dir, None)
        assert verdict.ok, verdict.reason
    unauthenticated = [r for r in records if r.get("reason") == "unauthenticated"]
    # Every refusal is counted; an interval wrote its budget and one count, no more; no
    # URL is kept at length.
    assert sum(int(r.get("count", 1)) for r in unauthenticated) == flood
    assert len(unauthenticated) <= intervals * (BUDGET + 1) < flood / 4
    assert all(len(str(r["url"])) <= URL_LIMIT for r in unauthenticated)
    assert any(r.get("agent") == "tester" and r.get("status") == 200 for r in records)
    # What people read counts the calls, not the records.
    assert summarise(records).total.refusals["unauthenticated"] == flood
