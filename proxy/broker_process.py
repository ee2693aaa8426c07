"""The broker's process as the proxy starts and supervises it.

A plain subprocess.Popen, so the proxy launches it before it has imported its event loop
(asyncio and uvloop, some 50 ms) or anything else: the broker's second of start-up then
runs beside all of the proxy's own. Its end is awaited through a thread blocked in
Popen.wait(), not through the loop's child watcher, which only knows the processes the
loop spawned itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


def launch_broker(socket_path: Path) -> BrokerProcess:
    """The broker for this socket, on its way up (the supervisor waits for its socket)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    env = {**os.environ, "BLINDKEY_BROKER_SUPERVISED": "1"}
    command = [sys.executable, "-m", "blindkey.broker", "serve", "--socket", str(socket_path)]
    return BrokerProcess(subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env))


class BrokerProcess:
    """What the supervisor asks of the broker's process: its pid, whether and how it
    ended, to wait for that on the event loop, and to end it."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._ended: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        # Never blocks: None while the waiting thread (or the process) has not finished.
        return self.popen.poll()

    async def wait(self) -> int:
        import asyncio

        if self._ended is None:
            loop = asyncio.get_running_loop()
            ended = self._ended = loop.create_future()

            def waiter() -> None:
                code = self.popen.wait()
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_settle, ended, code)

            threading.Thread(target=waiter, name="broker-wait", daemon=True).start()
        # Shielded: a waiter cancelled (the supervisor's watch, at stop) leaves it for others.
        return await asyncio.shield(self._ended)

    def terminate(self) -> None:
        self.popen.terminate()

    def kill(self) -> None:
        self.popen.kill()

    def end(self) -> None:
        """From outside the event loop: terminate a broker no supervisor took over, and reap
        it."""
        if self.popen.poll() is None:
            self.popen.terminate()
        self.popen.wait()


def _settle(ended: asyncio.Future[int], code: int) -> None:
    if not ended.done():
        ended.set_result(code)
