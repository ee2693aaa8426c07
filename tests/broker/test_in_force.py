"""A CLI change is in force in every running proxy when the command returns, or the command
says it is not and exits 1.

A broker in this process, the CLI as a user runs it (a subprocess, while this event loop
keeps the broker answering), and real proxies or bare broker clients on its socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.protocol import ACK_TIMEOUT
from blindkey.broker.server import BrokerServer
from blindkey.broker.vault import FileVault, ensure_key
from blindkey.config.home import init_config
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.proxy.server import ProxyServer
from tests.broker.conftest import Brokers, Ran, acli, one_line_error, point_at, silent_client
from tests.upstream import start_upstream

VALUE = "ghp_inForceValue0123456789abcdef"


@pytest.fixture
async def broker(home: Paths, brokers: Brokers) -> BrokerServer:
    """This home's broker, run as its own service on a socket config.toml names."""
    point_at(home, brokers.socket)
    return await brokers.start(home)


def not_in_force(result: Ran, done: str) -> str:
    line = one_line_error(result)
    assert line.startswith(f"blindkey: {done}, but it is not in force yet: "), line
    return line


async def test_a_proxy_that_does_not_acknowledge_makes_the_command_fail(
    home: Paths, broker: BrokerServer
) -> None:
    silent = await silent_client(broker.socket_path, None)
    try:
        added = await acli(home.config_dir, "agent", "add", "claude", "--json")
        line = not_in_force(added, "agent claude is added")
        assert f"1 running proxy did not confirm it within {ACK_TIMEOUT:.0f}s" in line
        assert "check `blindkey proxy status`" in line
        # The token is shown all the same: it is shown only this once.
        assert json.loads(added.stdout)["agent"] == "claude"

        allowed = await acli(home.config_dir, "allowlist", "add", "api.github.com")
        not_in_force(allowed, "the allowlist is saved")
        assert allowed.stdout == ""
        assert [e.text for e in load_settings(home.config_file).allowlist.entries] == [
            "api.github.com"
        ]
    finally:
        silent.close()
    # Once nobody lags, the same commands are in force when they return.
    assert (await acli(home.config_dir, "agent", "revoke", "claude")).returncode == 0
    assert (await acli(home.config_dir, "allowlist", "remove", "api.github.com")).returncode == 0


async def test_a_broker_that_cannot_load_the_files_makes_the_command_fail(
    home: Paths, broker: BrokerServer
) -> None:
    home.agents_file.write_text("{not json")
    stored = await acli(home.config_dir, "secrets", "set", "GH", stdin=VALUE)
    line = not_in_force(stored, "GH is stored in development")
    assert "the broker cannot load the files and serves what it had before" in line
    assert "corrupt agent file" in line
    assert VALUE not in stored.stdout + stored.stderr
    assert FileVault(home).load() == {"development": {"GH": VALUE}}


async def test_no_broker_running_means_nothing_to_wait_for(home: Paths, sock_dir: Path) -> None:
    point_at(home, sock_dir / "nobody.sock")
    for args in (("agent", "add", "claude"), ("allowlist", "add", "api.github.com")):
        result = await acli(home.config_dir, *args)
        assert result.returncode == 0 and result.stderr == "", result.stderr


@dataclass
class Split:
    """A proxy with a config.toml of its own, on a broker that serves from another home."""

    proxy_home: Paths
    target: str
    url: str
    headers: dict[str, str]


def other_home(base: Path) -> Paths:
    paths = Paths(config_dir=base, state_dir=base, runtime_dir=base / "run")
    init_config(paths)
    ensure_key(paths)
    return paths


@pytest.fixture
async def split(home: Paths, broker: BrokerServer, tmp_path: Path) -> AsyncIterator[Split]:
    FileVault(home).set("development", "GH", VALUE)
    token = AgentStore(home.agents_file, home.lock_file).add("claude")
    assert broker.state.refresh()
    proxy_home = other_home(tmp_path / "proxy-home")
    point_at(proxy_home, broker.socket_path)
    upstream, port = await start_upstream()
    server = ProxyServer(
        proxy_home, load_settings(proxy_home.config_file), host="127.0.0.1", port=0
    )
    await server.start()
    try:
        yield Split(
            proxy_home,
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{server.port}/proxy",
            {
                "X-AS-Agent-Token": token,
                "X-AS-Target-URL": f"http://127.0.0.1:{port}/echo",
                "X-AS-Inject-Bearer": "GH",
            },
        )
    finally:
        await server.stop()
        await upstream.cleanup()


async def test_an_allowlist_change_reaches_a_proxy_whose_config_the_broker_does_not_read(
    split: Split,
) -> None:
    async with aiohttp.ClientSession() as session:

        async def call() -> tuple[int, str | None]:
            async with session.get(split.url, headers=split.headers) as response:
                body = await response.read()
                error = orjson.loads(body)["error"] if response.status != 200 else None
                return response.status, error

        # The first call connects the proxy to the broker: from then on it is pushed to.
        assert await call() == (403, "host_not_allowed")
        for _ in range(3):
            added = await acli(split.proxy_home.config_dir, "allowlist", "add", split.target)
            assert added.returncode == 0, added.stderr
            assert await call() == (200, None)
            args = ("allowlist", "remove", split.target)
            removed = await acli(split.proxy_home.config_dir, *args)
            assert removed.returncode == 0, removed.stderr
            assert await call() == (403, "host_not_allowed")
