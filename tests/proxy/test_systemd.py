"""The notify protocol against a fake $NOTIFY_SOCKET: READY=1 once /health answers, WATCHDOG=1
from the event loop (none while the loop is blocked), STOPPING=1 on SIGTERM, in that order."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindkey.config.paths import Paths
from blindkey.proxy.systemd import ServiceNotifier
from tests.conftest import ROOT


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    try:
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    messages = []
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.setblocking(True)


@pytest.mark.timeout(60)
def test_ready_watchdog_and_stopping_in_order(home: Paths, notify_socket: socket.socket) -> None:
    env = {
        **os.environ,
        "BLINDKEY_HOME": str(home.config_dir),
        "NOTIFY_SOCKET": notify_socket.getsockname(),
        "WATCHDOG_USEC": "200000",
    }
    command = [sys.executable, "-m", "blindkey.cli", "proxy", "start", "--foreground"]
    process = subprocess.Popen(
        [*command, "--port", "0"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    try:
        ready = receive(notify_socket, 20)
        assert ready.startswith("READY=1") and f"MAINPID={process.pid}" in ready
        # READY means serving: /health answers at once, no retry.
        port = json.loads(home.status_file.read_text())["port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            assert answer.status == 200
        pings = [receive(notify_socket, 2) for _ in range(3)]
        assert pings == ["WATCHDOG=1"] * 3
        process.send_signal(signal.SIGTERM)
        rest: list[str] = []
        while not rest or rest[-1] != "STOPPING=1":
            rest.append(receive(notify_socket, 10))
        assert set(rest[:-1]) <= {"WATCHDOG=1"}
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_the_watchdog_is_fed_by_the_event_loop(notify_socket: socket.socket) -> None:
    notifier = ServiceNotifier(
        {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "100000"}
    )
    notifier.ready("test")
    await asyncio.sleep(0.2)
    assert "WATCHDOG=1" in drain(notify_socket)
    time.sleep(0.5)  # noqa: ASYNC251 - the point: a wedged loop; a thread would ping on
    assert drain(notify_socket) == []
    await asyncio.sleep(0.2)
    assert "WATCHDOG=1" in drain(notify_socket)
    await notifier.stopping()
    assert drain(notify_socket)[-1] == "STOPPING=1"


def test_without_a_service_manager_nothing_is_sent() -> None:
    notifier = ServiceNotifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.send("READY=1")  # no socket: a no-op, no error


def test_an_abstract_notify_socket_is_reached() -> None:
    name = f"blindkey-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        ServiceNotifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert receive(sock, 5) == "READY=1"


def test_a_watchdog_meant_for_another_process_is_not_fed() -> None:
    other = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}
    assert ServiceNotifier(other).watchdog_interval is None
    own = {**other, "WATCHDOG_PID": str(os.getpid())}
    assert ServiceNotifier(own).watchdog_interval == 0.05
