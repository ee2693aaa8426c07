"""A restarted proxy reads its sealed matcher back (redact/cache.py) instead of compiling
it, and redacts as before; the key it is sealed under comes from the broker and is in no
file of the proxy's; a change rebuilds before any call asks, and removes what it replaced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.notify import notify_broker
from blindkey.broker.placeholders import key_file
from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from blindkey.redact import shards
from blindkey.redact.cache import cache_dir, derive_key
from tests.proxy.conftest import SECRET, Env, open_env


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counted: list[int] = []
    real = shards._compiled

    def counting(*args: object, **kwargs: object) -> object:
        counted.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shards, "_compiled", counting)
    return counted


async def echoed(env: Env) -> bytes:
    status, _, body = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert status == 200
    return body


def sealed(home: Paths) -> set[str]:
    return {path.name for path in cache_dir(home.state_dir).iterdir()}


async def test_a_restart_reads_the_matcher_back_and_redacts_the_same(
    home: Paths, compiles: list[int]
) -> None:
    async with open_env(home) as env:
        assert env.server.warming is not None
        await env.server.warming
        first = await echoed(env)
        port = env.upstream_port
    assert compiles and sealed(home)
    assert SECRET.encode() not in first and b"[REDACTED:GITHUB_TOKEN]" in first
    AgentStore(home.agents_file, home.lock_file).revoke("tester")  # open_env adds it again
    shards._recent.keep({})  # a new process: nothing of the last build in memory
    compiles.clear()
    async with open_env(home) as env:
        assert env.server.warming is not None
        await env.server.warming
        assert compiles == []
        again = await echoed(env)
    # The same answer but for the upstream's port, which a new upstream changed.
    assert again.replace(str(env.upstream_port).encode(), b"PORT") == first.replace(
        str(port).encode(), b"PORT"
    )


async def test_the_seal_key_is_the_brokers_and_in_no_file(home: Paths) -> None:
    async with open_env(home) as env:
        assert env.server.warming is not None
        await env.server.warming
        reply = await env.server.runtime.authoriser.broker.call("redaction_set")
    key = bytes.fromhex(reply["cache_key"])
    assert key == derive_key(key_file(home).read_bytes())
    holding = [path for path, content in contents(home.state_dir) if key in content]
    assert holding == []
    spelled = [path for path, content in contents(home.state_dir) if key.hex().encode() in content]
    assert spelled == []


def contents(directory: Path) -> list[tuple[Path, bytes]]:
    return [(path, path.read_bytes()) for path in directory.rglob("*") if path.is_file()]


async def test_a_removed_value_is_rebuilt_without_a_call_and_its_shard_goes(
    home: Paths, compiles: list[int]
) -> None:
    async with open_env(home) as env:
        assert env.server.warming is not None
        await env.server.warming
        before = sealed(home)
        authoriser = env.server.runtime.authoriser
        FileVault(home).delete("development", "STRIPE_KEY")
        compiles.clear()
        # As `secrets rm` does (in a thread: the broker waits for this loop's proxy).
        late = await asyncio.to_thread(notify_broker, home, None, [("development", "STRIPE_KEY")])
        assert late is None
        # The invalidation started the rebuild: wait for it, not for a call.
        while authoriser.rebuilding:
            await next(iter(authoriser.rebuilding))
        assert compiles
        assert sealed(home) != before and len(sealed(home)) == len(before)
