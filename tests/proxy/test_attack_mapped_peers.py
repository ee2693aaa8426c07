"""Issue 23 (seen alongside item 9): with the proxy on `--host ::`, IPv4 callers arrive as
::ffff:a.b.c.d. They must be matched against IPv4 `allowed_peers` as the IPv4 address they
are, and a local IPv4 caller is still a local one."""

from __future__ import annotations

from typing import Any

from blindkey.config.paths import Paths
from blindkey.proxy.server import ProxyServer
from tests.proxy.conftest import open_env
from tests.proxy.test_remote_callers import call_from, remote_address, remote_config

__all__ = ["remote_address"]  # the fixture, used by name


def dual_stack(document: Any) -> None:
    document["proxy"]["host"] = "::"


def bind_dual_stack(server: ProxyServer) -> None:
    server.host = "::"


async def test_an_ipv4_peer_of_a_dual_stack_listener_matches_ipv4_allowed_peers(
    home: Paths, remote_address: str
) -> None:
    def configure(document: Any) -> None:
        remote_config(f"{remote_address}/32", anonymous=False)(document)
        dual_stack(document)

    async with open_env(home, configure, bind_dual_stack) as env:
        assert env.server.host == "::"
        status, _ = await call_from(env, remote_address, token=True)
        assert status == 200
        # A local IPv4 caller arrives as ::ffff:127.0.0.1: still local, not refused.
        status, _ = await call_from(env, "127.0.0.1", token=True)
        assert status == 200
