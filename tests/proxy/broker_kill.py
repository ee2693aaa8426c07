"""Killing a proxy's supervised broker with SIGKILL, and waiting for its restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from blindkey.proxy.server import ProxyServer


async def killed(server: ProxyServer) -> int:
    """SIGKILL the supervised broker; returns once the process is gone."""
    pid = server.broker_pid
    assert pid is not None
    fd = os.pidfd_open(pid)
    os.kill(pid, signal.SIGKILL)
    ended = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, ended.set)
    try:
        await asyncio.wait_for(ended.wait(), 10)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return pid


async def restarted(server: ProxyServer, old: int) -> None:
    deadline = time.monotonic() + 10
    while server.broker_pid in (None, old) or server.broker_state != "running":
        assert time.monotonic() < deadline, "the broker was not restarted"
        await asyncio.sleep(0.02)
