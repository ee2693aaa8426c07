"""Spawning the broker and bringing it back, with backoff, whenever it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from broker.protocol import BrokerUnavailable

log = logging.getLogger("blindkey.proxy")
START_TIMEOUT = 10.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
HEALTHY_AFTER = 10.0


class BrokerSupervisor:
    def __init__(self, socket_path: Path, on_state: Callable[[str, int | None], None]) -> None:
        self.socket_path = socket_path
        self.on_state = on_state
        self.process: asyncio.subprocess.Process | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        await self._spawn()
        self._watch_task = asyncio.create_task(self._watch(), name="broker-supervisor")

    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        env = {**os.environ, "BLINDKEY_BROKER_SUPERVISED": "1"}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broker",
            "serve",
            "--socket",
            str(self.socket_path),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not await self._socket_ready():
            if self.process.returncode is not None:
                raise BrokerUnavailable(f"the broker exited with status {self.process.returncode}")
            if time.monotonic() > deadline:
                raise BrokerUnavailable("the broker did not open its socket in time")
            await asyncio.sleep(0.01)
        self.on_state("running", self.process.pid)

    async def _socket_ready(self) -> bool:
        try:
            _, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            return False
        writer.close()
        return True

    async def _watch(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            assert self.process is not None
            started = time.monotonic()
            status = await self.process.wait()
            if self._stopping:
                return
            log.error("broker exited with status %s; restarting", status)
            self.on_state("restarting", None)
            if time.monotonic() - started > HEALTHY_AFTER:
                backoff = BACKOFF_FIRST
            while not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                try:
                    await self._spawn()
                    break
                except (BrokerUnavailable, OSError) as exc:
                    log.error("broker restart failed: %s", exc)

    async def stop(self) -> None:
        self._stopping = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.on_state("stopped", None)
