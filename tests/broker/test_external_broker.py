"""ExternalBroker: the proxy's side of a broker it connects to instead of spawning."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from blindkey.broker.protocol import BrokerUnavailable
from blindkey.config.paths import Paths
from blindkey.proxy.supervisor import ExternalBroker
from tests.broker.conftest import Brokers, until

States = list[tuple[str, int | None]]


async def test_reports_running_unreachable_and_running_again(home: Paths, brokers: Brokers) -> None:
    server = await brokers.start(home)
    states: States = []
    external = ExternalBroker(
        server.socket_path, lambda s, pid: states.append((s, pid)), interval=0.05
    )
    try:
        await external.start()
        assert states == [("running", os.getpid())]
        await brokers.stop(server)
        await until(lambda: states[-1] == ("unreachable", None))
        assert server.socket_path.exists() is False, "it never creates or replaces the socket"

        await brokers.start(home)
        await until(lambda: states[-1] == ("running", os.getpid()))
        count = len(states)
        await asyncio.sleep(0.2)
        assert len(states) == count, "a steady state is reported once"
    finally:
        await external.stop()
    assert states[-1] == ("stopped", None)


async def test_waits_for_a_broker_that_starts_late(home: Paths, brokers: Brokers) -> None:
    states: States = []
    external = ExternalBroker(
        brokers.socket, lambda s, pid: states.append((s, pid)), start_timeout=5
    )
    starting = asyncio.create_task(external.start(), name="external-start")
    await asyncio.sleep(0.3)
    assert not starting.done()
    await brokers.start(home)
    try:
        await asyncio.wait_for(starting, 5)
        assert states == [("running", os.getpid())]
    finally:
        await external.stop()


async def test_no_broker_is_one_clear_error(sock_dir: Path) -> None:
    external = ExternalBroker(sock_dir / "none.sock", lambda s, pid: None, start_timeout=0.2)
    with pytest.raises(BrokerUnavailable) as info:
        await external.start()
    message = str(info.value)
    assert "no broker answers at" in message and "No such file" in message
    assert "blindkey broker serve --socket" in message
    assert "\n" not in message


async def test_a_uid_the_broker_does_not_allow_is_told_so(home: Paths, brokers: Brokers) -> None:
    server = await brokers.start(home, uids=frozenset({os.getuid() + 1}))
    external = ExternalBroker(server.socket_path, lambda s, pid: None, start_timeout=0.2)
    with pytest.raises(BrokerUnavailable, match=r"this uid \(\d+\) is not allowed"):
        await external.start()
