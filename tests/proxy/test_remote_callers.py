"""Binding beyond loopback: refused unless meant (allow_remote), and then every caller
needs a token and remote callers must be in allowed_peers. A spoofed `Host: 127.0.0.1`
from another machine gets nothing.

Another machine is a test address (TEST-NET-2) added to `lo` for the test and removed
after: connections from it are not loopback connections, as a LAN peer's are not.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from blindkey.proxy.server import ProxyServer
from tests.conftest import RunCli
from tests.proxy.conftest import Env, open_env
from tests.upstream import HITS

REMOTE = "198.51.100.77"


@pytest.fixture(scope="module")
def remote_address() -> Iterator[str]:
    subprocess.run(["ip", "addr", "add", f"{REMOTE}/32", "dev", "lo"], check=True)
    try:
        yield REMOTE
    finally:
        subprocess.run(["ip", "addr", "del", f"{REMOTE}/32", "dev", "lo"], check=False)


def remote_config(*peers: str, anonymous: bool = True) -> Any:
    def configure(document: Any) -> None:
        proxy = toml_table(document, "proxy")
        proxy["host"] = "0.0.0.0"
        proxy["allow_remote"] = True
        proxy["allowed_peers"] = string_array(list(peers))
        proxy["require_agent_token"] = not anonymous

    return configure


def bind_everywhere(server: ProxyServer) -> None:
    server.host = "0.0.0.0"


async def call_from(env: Env, address: str, *, token: bool) -> tuple[int, dict[str, Any]]:
    """A call from `address`, claiming `Host: 127.0.0.1` as a spoofing peer would."""
    reader, writer = await asyncio.open_connection(address, env.server.port)
    headers = (
        f"Host: 127.0.0.1\r\nX-AS-Target-URL: {env.base}/echo\r\n"
        "X-AS-Inject-Bearer: GITHUB_TOKEN\r\n"
    )
    if token:
        headers += f"X-AS-Agent-Token: {env.token}\r\n"
    writer.write(f"GET /proxy HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, orjson.loads(body) if status != 200 else {}


@pytest.fixture
async def remote_env(home: Paths, remote_address: str) -> AsyncIterator[Env]:
    async with open_env(home, remote_config(f"{remote_address}/32"), bind_everywhere) as env:
        yield env


async def test_a_peer_outside_allowed_peers_is_refused_even_with_a_loopback_host(
    home: Paths, remote_address: str
) -> None:
    async with open_env(home, remote_config("203.0.113.0/24"), bind_everywhere) as env:
        status, error = await call_from(env, remote_address, token=True)
        assert (status, error["error"]) == (403, "forbidden_origin")
        assert env.upstream.app[HITS] == []


async def test_an_allowed_peer_needs_a_token_even_when_anonymous_callers_are_on(
    remote_env: Env, remote_address: str
) -> None:
    status, error = await call_from(remote_env, remote_address, token=False)
    assert (status, error["error"]) == (401, "unauthenticated")
    status, _ = await call_from(remote_env, remote_address, token=True)
    assert status == 200


async def test_with_remote_callers_allowed_local_callers_need_a_token_too(remote_env: Env) -> None:
    status, error = await call_from(remote_env, "127.0.0.1", token=False)
    assert (status, error["error"]) == (401, "unauthenticated")
    assert (await call_from(remote_env, "127.0.0.1", token=True))[0] == 200


def test_a_non_loopback_bind_is_refused_unless_meant(run_cli: RunCli, home: Paths) -> None:
    started = run_cli("proxy", "start", "--host", "0.0.0.0", "--port", "0")
    assert started.returncode == 2
    assert "allow-remote" in started.stderr and "Traceback" not in started.stderr
    config = home.config_file.read_text().replace('host = "127.0.0.1"', 'host = "0.0.0.0"', 1)
    home.config_file.write_text(config)
    checked = run_cli("config", "check")
    assert checked.returncode == 1 and "allow_remote" in checked.stderr


def test_allow_remote_start_says_so_loudly(run_cli: RunCli, home: Paths) -> None:
    started = run_cli("proxy", "start", "--host", "0.0.0.0", "--port", "0", "--allow-remote")
    try:
        assert started.returncode == 0, started.stderr
        log = home.proxy_log.read_text()
        assert "WARNING: calls from other machines are accepted" in log
    finally:
        run_cli("proxy", "stop")
