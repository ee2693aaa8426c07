"""A broker process, as the proxy launches it, starts without aiohttp's HTTP client (a
quarter of a second of imports and two CA-bundle loads) and loads it for its first token
call: a computed credential still refreshes from a real token endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blindkey.broker.client import BrokerClient
from blindkey.config.paths import Paths
from tests.broker.conftest import until
from tests.broker.credentials.conftest import TokenServer
from tests.broker.credentials.helpers import resolve
from tests.broker.credentials.test_oauth2 import google
from tests.conftest import ROOT
from tests.imported import REPORT, imported, loaded

Launch = Callable[[], tuple[Path, Path]]


@pytest.fixture
def launch(home: Paths, sock_dir: Path, tmp_path: Path) -> Iterator[Launch]:
    """Starts `python -m blindkey.broker serve` on a socket, reporting its imports, and
    returns (the socket, the report)."""
    socket, report = sock_dir / "broker.sock", tmp_path / "imports.txt"
    started: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[Path, Path]:
        with report.open("wb") as errors:
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "blindkey.broker", "serve", "--socket", str(socket)],
                    env={**os.environ, "BLINDKEY_HOME": str(home.config_dir), **REPORT},
                    stdin=subprocess.DEVNULL,
                    stderr=errors,
                    cwd=ROOT,
                )
            )
        return socket, report

    yield start
    for broker in started:
        broker.terminate()
        broker.wait(timeout=30)


async def test_the_http_client_loads_at_the_first_refresh_not_at_start(
    home: Paths, token_server: TokenServer, launch: Launch
) -> None:
    agent = google(home, token_server)
    socket, report = launch()
    await until(socket.exists, timeout=45)
    client = BrokerClient(socket)
    try:
        await client.connect()  # serving: everything the start loads is loaded
        assert loaded(imported(report), "aiohttp") == []
        reply = await resolve(client, agent, "GOOGLE")
        assert reply["values"] == {"GOOGLE": token_server.issued[0]}
        assert token_server.forms[0]["grant_type"] == "refresh_token"
        assert "aiohttp.client" in imported(report)
    finally:
        await client.close()
