"""ExternalBroker: the proxy's side of a broker it connects to instead of spawning."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from blindkey.broker.protocol import BrokerUnavailable
from blindkey.broker.server import BrokerServer
from blindkey.config.paths import Paths
from blindkey.proxy.supervisor import ExternalBroker

States = list[tuple[str, int | None]]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


async def _until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_reports_running_unreachable_and_running_again(home: Paths, sock_dir: Path) -> None:
    path = sock_dir / "b.sock"
    server = BrokerServer(home, path, frozenset({os.getuid()}))
    await server.start()
    states: States = []
    external = ExternalBroker(path, lambda s, pid: states.append((s, pid)), interval=0.05)
    try:
        await external.start()
        assert states == [("running", os.getpid())]
        await server.close()
        await _until(lambda: states[-1] == ("unreachable", None))
        assert path.exists() is False, "it never creates or replaces the socket"

        server = BrokerServer(home, path, frozenset({os.getuid()}))
        await server.start()
        await _until(lambda: states[-1] == ("running", os.getpid()))
        count = len(states)
        await asyncio.sleep(0.2)
        assert len(states) == count, "a steady state is reported once"
    finally:
        await external.stop()
        await server.close()
    assert states[-1] == ("stopped", None)


async def test_waits_for_a_broker_that_starts_late(home: Paths, sock_dir: Path) -> None:
    path = sock_dir / "b.sock"
    states: States = []
    external = ExternalBroker(path, lambda s, pid: states.append((s, pid)), start_timeout=5)
    starting = asyncio.create_task(external.start(), name="external-start")
    await asyncio.sleep(0.3)
    assert not starting.done()
    server = BrokerServer(home, path, frozenset({os.getuid()}))
    await server.start()
    try:
        await asyncio.wait_for(starting, 5)
        assert states == [("running", os.getpid())]
    finally:
        await external.stop()
        await server.close()


async def test_no_broker_is_one_clear_error(sock_dir: Path) -> None:
    external = ExternalBroker(sock_dir / "none.sock", lambda s, pid: None, start_timeout=0.2)
    with pytest.raises(BrokerUnavailable) as info:
        await external.start()
    message = str(info.value)
    assert "no broker answers at" in message and "No such file" in message
    assert "blindkey broker serve --socket" in message
    assert "\n" not in message


async def test_a_uid_the_broker_does_not_allow_is_told_so(home: Paths, sock_dir: Path) -> None:
    path = sock_dir / "b.sock"
    server = BrokerServer(home, path, frozenset({os.getuid() + 1}))
    await server.start()
    try:
        external = ExternalBroker(path, lambda s, pid: None, start_timeout=0.2)
        with pytest.raises(BrokerUnavailable, match=r"this uid \(\d+\) is not allowed"):
            await external.start()
    finally:
        await server.close()
