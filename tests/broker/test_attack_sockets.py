"""Issue 23, item 15: a local process that may open the broker's socket (the agent's own
user in a hardened deployment) opens connections and keeps them; the broker ran out of
descriptors and every exec, env and mcp call of every user failed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindkey.broker.link import Link
from blindkey.broker.protocol import encode, read_frame
from blindkey.broker.sockets import ConnectionLimits
from blindkey.config.paths import Paths
from tests.broker.conftest import Brokers
from tests.conftest import ROOT

# The descriptors a broker gets under a service manager's default soft limit, scaled down.
BROKER_FILES = 256
HOARD = 600

# Connects until it holds `count` connections, or until the broker has taken none for a
# second (its queue of unaccepted connections is full: it accepts no more).
HOARDER = """
import socket, sys, time
held, last = [], time.monotonic()
while len(held) < int(sys.argv[2]) and time.monotonic() - last < 1:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    if sock.connect_ex(sys.argv[1]) == 0:
        held.append(sock)
        last = time.monotonic()
    else:
        sock.close()
        time.sleep(0.005)
print(len(held), flush=True)
sys.stdin.read()
"""


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (BROKER_FILES, BROKER_FILES))


@pytest.fixture
def broker_process(home: Paths, sock_dir: Path) -> Iterator[Path]:
    """`blindkey broker serve` in its own process, with few descriptors."""
    socket_path = sock_dir / "b.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "blindkey.broker", "serve", "--socket", str(socket_path)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_low_file_limit,  # in the child, before exec: its own limit only
    )
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        yield socket_path
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.timeout(90)
def test_a_process_hoarding_connections_does_not_lock_others_out(broker_process: Path) -> None:
    hoarder = subprocess.Popen(
        [sys.executable, "-c", HOARDER, str(broker_process), str(HOARD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hoarder.stdout is not None
        assert int(hoarder.stdout.readline()) > 0
        # Another process (this one) still gets an answer, as `blindkey exec` asks.
        with Link(broker_process) as link:
            assert link.call("ping")["pid"] != os.getpid()
    finally:
        assert hoarder.stdin is not None
        hoarder.stdin.close()
        hoarder.wait(timeout=10)
        if hoarder.stdout is not None:
            hoarder.stdout.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def test_one_process_holds_at_most_its_share(seeded_home: Paths, brokers: Brokers) -> None:
    server = await brokers.start(seeded_home)
    server.limits = ConnectionLimits(per_pid=4, per_uid=100, idle_timeout=60)
    held = [await asyncio.open_unix_connection(server.socket_path) for _ in range(6)]
    assert all([await closed_within(reader, 1) for reader, _ in held[4:]])
    assert not any([await closed_within(reader, 0.1) for reader, _ in held[:4]])
    assert server.peers.refused == 2
    for _, writer in held:
        writer.close()


async def test_a_silent_connection_is_closed_and_a_proxy_connection_kept(
    seeded_home: Paths, brokers: Brokers
) -> None:
    server = await brokers.start(seeded_home)
    server.limits = ConnectionLimits(idle_timeout=0.3)
    proxy = brokers.client(server)
    await proxy.call("redaction_set")  # it caches answers: it waits for pushes, silently
    reader, writer = await asyncio.open_unix_connection(server.socket_path)
    writer.write(encode({"id": 1, "op": "ping"}))
    assert await asyncio.wait_for(read_frame(reader), 5) is not None
    began = time.monotonic()
    assert await closed_within(reader, 5)
    assert 0.25 < time.monotonic() - began < 3
    assert proxy.connected
    assert (await proxy.call("ping"))["pid"] == os.getpid()
    writer.close()


@pytest.fixture
def seeded_home(home: Paths) -> Paths:
    with contextlib.suppress(FileExistsError):
        home.state_dir.mkdir(parents=True)
    return home
