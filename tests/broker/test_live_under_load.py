"""Rotation, delete and revoke under load: once the CLI command has returned, no request
that starts afterwards uses the old value or the old token.

A real proxy (in process) with its real broker subprocess, a loopback upstream, and
workers keeping requests in flight the whole time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from blindkey.audit.reader import Filter, read_records
from blindkey.audit.writer import audit_file
from blindkey.broker.agents import AgentStore
from blindkey.broker.notify import notify_broker
from blindkey.broker.protocol import ACK_TIMEOUT
from blindkey.broker.vault import FileVault
from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.proxy.server import ProxyServer
from tests.broker.conftest import Brokers, acli, point_at, silent_client
from tests.upstream import start_upstream

OLD = "old-value-0123456789abcdef"
WORKERS = 16


def bearer_sha(value: str) -> str:
    return hashlib.sha256(f"Bearer {value}".encode()).hexdigest()


@dataclass
class Sample:
    started: float
    status: int
    auth_sha: str | None
    error: str | None


@dataclass
class Load:
    url: str
    headers: dict[str, str]
    samples: list[Sample] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            async with session.get(self.url, headers=self.headers) as response:
                body = await response.read()
                error = orjson.loads(body)["error"] if response.status >= 400 else None
                sha = response.headers.get("X-Echo-Authorization-Sha256")
                self.samples.append(Sample(started, response.status, sha, error))
                self.arrived.set()

    def after(self, moment: float) -> list[Sample]:
        return [s for s in self.samples if s.started >= moment]

    async def until(self, count: int, moment: float = 0.0) -> list[Sample]:
        """Wait for `count` answers to requests started at `moment` or later: on a busy
        machine that takes what it takes (the test's timeout bounds it)."""
        while len(self.after(moment)) < count:
            self.arrived.clear()
            await self.arrived.wait()
        return self.after(moment)


@dataclass
class Rig:
    paths: Paths
    server: ProxyServer
    upstream_port: int
    token: str


@pytest.fixture
async def rig(home: Paths) -> AsyncIterator[Rig]:
    upstream, port = await start_upstream()
    try:

        def allow(document: Any) -> None:
            toml_table(document, "allowlist")["hosts"] = string_array([f"http://127.0.0.1:{port}"])
            toml_table(document, "audit")["fsync"] = False

        edit_config(home.config_file, home.lock_file, allow)
        FileVault(home).set("development", "GH", OLD)
        token = AgentStore(home.agents_file, home.lock_file).add("loader")
        server = ProxyServer(home, load_settings(home.config_file), host="127.0.0.1", port=0)
        await server.start()
        try:
            yield Rig(home, server, port, token)
        finally:
            await server.stop()
    finally:
        await upstream.cleanup()


@contextlib.asynccontextmanager
async def under_load(rig: Rig) -> AsyncIterator[Load]:
    load = Load(
        f"http://127.0.0.1:{rig.server.port}/proxy",
        {
            "X-AS-Agent-Token": rig.token,
            "X-AS-Target-URL": f"http://127.0.0.1:{rig.upstream_port}/echo",
            "X-AS-Inject-Bearer": "GH",
        },
    )
    connector = aiohttp.TCPConnector(limit=WORKERS)
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [
            asyncio.create_task(load.worker(session), name=f"load-{i}") for i in range(WORKERS)
        ]
        try:
            # Warm: once every worker has its answer, the proxy has cached its resolution.
            await load.until(WORKERS)
            assert all(s.auth_sha == bearer_sha(OLD) for s in load.samples)
            yield load
        finally:
            load.stop.set()
            await asyncio.gather(*workers)


async def test_rotation_under_load(rig: Rig) -> None:
    new = "rotated-value-9876543210fedcba"
    async with under_load(rig) as load:
        ran = await acli(rig.paths.config_dir, "secrets", "set", "GH", stdin=new)
        returned = time.monotonic()
        assert ran.returncode == 0, ran.stderr
        later = await load.until(51, returned)
    stale = [s for s in later if s.auth_sha != bearer_sha(new)]
    assert stale == [], f"{len(stale)} requests after the rotation used the old value"


async def test_delete_under_load(rig: Rig) -> None:
    async with under_load(rig) as load:
        ran = await acli(rig.paths.config_dir, "secrets", "delete", "GH")
        returned = time.monotonic()
        assert ran.returncode == 0, ran.stderr
        later = await load.until(51, returned)
    assert {(s.status, s.error) for s in later} == {(404, "unknown_secret")}
    assert all(s.auth_sha is None for s in later)


async def test_revoke_under_load(rig: Rig) -> None:
    async with under_load(rig) as load:
        ran = await acli(rig.paths.config_dir, "agent", "revoke", "loader")
        returned = time.monotonic()
        assert ran.returncode == 0, ran.stderr
        later = await load.until(51, returned)
    assert {(s.status, s.error) for s in later} == {(401, "unauthenticated")}


async def test_a_change_is_answered_only_after_caching_clients_dropped_their_caches(
    home: Paths, brokers: Brokers
) -> None:
    point_at(home, brokers.socket)
    FileVault(home).set("development", "GH", OLD)
    token = AgentStore(home.agents_file, home.lock_file).add("claude")
    server = await brokers.start(home)
    events: list[str] = []
    caching = brokers.client(server, on_push=lambda m: events.append("dropped cache"))
    await caching.call("resolve", token=token, names=["GH"], host="x.io")
    # A client that resolves but never acknowledges: the change waits for it, not forever.
    silent = await silent_client(server.socket_path, token)
    try:
        FileVault(home).set("development", "GH", "new-value")
        settings = load_settings(home.config_file)
        started = time.monotonic()
        problem = await asyncio.to_thread(notify_broker, home, settings, [("development", "GH")])
        events.append("cli returned")
        waited = time.monotonic() - started
        assert events == ["dropped cache", "cli returned"]
        assert ACK_TIMEOUT * 0.9 < waited < ACK_TIMEOUT + 1.0
        # The CLI is told, and says so: the silent client may still use the old value.
        assert problem == (
            f"1 running proxy did not confirm it within {ACK_TIMEOUT:.0f}s; check "
            "`blindkey proxy status`; the change is saved and applies once it answers"
        )
        reply = await caching.call("resolve", token=token, names=["GH"], host="x.io")
        assert reply["values"] == {"GH": "new-value"}

        # Without the silent one, the answer comes as soon as the caching client acked.
        silent.close()
        FileVault(home).set("development", "GH", "newer-value")
        started = time.monotonic()
        assert (
            await asyncio.to_thread(notify_broker, home, settings, [("development", "GH")]) is None
        )
        assert time.monotonic() - started < ACK_TIMEOUT / 2
        assert events[-1] == "dropped cache"
    finally:
        silent.close()


async def test_the_audit_records_the_environment_of_every_use(rig: Rig) -> None:
    FileVault(rig.paths).set("staging", "GH", "staging-value-0123456789")
    url = f"http://127.0.0.1:{rig.server.port}/proxy"
    headers = {
        "X-AS-Agent-Token": rig.token,
        "X-AS-Target-URL": f"http://127.0.0.1:{rig.upstream_port}/echo",
        "X-AS-Inject-Bearer": "GH",
    }
    statuses = []
    async with aiohttp.ClientSession() as session:
        for switch_to in (None, "staging", "production", "development"):
            if switch_to is not None:
                args = ["environment", "switch", switch_to, "--yes"]
                assert (await acli(rig.paths.config_dir, *args)).returncode == 0
            async with session.get(url, headers=headers) as response:
                statuses.append(response.status)
    await rig.server.audit.flush()
    records, _ = read_records(audit_file(rig.paths.audit_dir), Filter())
    records = [r for r in records if r.get("event") != "config"]  # environment switches
    assert [(r["env"], r["status"]) for r in records] == [
        ("development", 200),
        ("staging", 200),
        ("production", 404),  # nothing stored there: refused, and recorded where
        ("development", 200),
    ]
    assert statuses == [200, 200, 404, 200]
