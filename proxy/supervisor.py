"""Spawning the broker and bringing it back, with backoff, whenever it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from blindkey.broker.protocol import BrokerUnavailable, ProtocolError, encode, read_frame
from blindkey.proxy.broker_process import BrokerProcess, launch_broker

log = logging.getLogger("blindkey.proxy")
START_TIMEOUT = 10.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
HEALTHY_AFTER = 10.0


class BrokerSupervisor:
    def __init__(
        self,
        socket_path: Path,
        on_state: Callable[[str, int | None], None],
        spawned: BrokerProcess | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.on_state = on_state
        # The broker the proxy launched first thing for this socket: the first start adopts it.
        self.process: BrokerProcess | None = spawned
        self._watch_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self._until_listening()
        else:
            await self._spawn()
        self._watch_task = asyncio.create_task(self._watch(), name="broker-supervisor")

    async def _spawn(self) -> None:
        self.process = launch_broker(self.socket_path)
        await self._until_listening()

    async def _until_listening(self) -> None:
        assert self.process is not None
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


class ExternalBroker:
    """A broker run as its own service (`[broker] socket`): connect, never spawn.

    Same interface as BrokerSupervisor. The broker belongs to another user and another
    service manager, so this only reports whether it answers; the proxy's requests get
    503 broker_unavailable while it does not.
    """

    def __init__(
        self,
        socket_path: Path,
        on_state: Callable[[str, int | None], None],
        *,
        start_timeout: float = START_TIMEOUT,
        interval: float = 1.0,
    ) -> None:
        self.socket_path = socket_path
        self.on_state = on_state
        self.start_timeout = start_timeout
        self.interval = interval
        self.problem = ""
        self._state: tuple[str, int | None] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while (pid := await self._ping()) is None:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"no broker answers at {self.socket_path} ({self.problem}); start it with "
                    f"`blindkey broker serve --socket {self.socket_path}` as the broker's user, "
                    "and let this user in: its uid in [broker] allowed_uids, and the socket's group"
                )
            await asyncio.sleep(0.05)
        self._report("running", pid)
        self._watch_task = asyncio.create_task(self._watch(), name="broker-external-watch")

    def _report(self, state: str, pid: int | None) -> None:
        if (state, pid) != self._state:
            self._state = (state, pid)
            self.on_state(state, pid)

    async def _ping(self) -> int | None:
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as exc:
            self.problem = exc.strerror or str(exc)
            return None
        try:
            writer.write(encode({"id": 1, "op": "ping"}))
            while True:
                reply = await asyncio.wait_for(read_frame(reader), timeout=5)
                if reply is None:
                    raise ConnectionResetError
                if reply.get("id") == 1:
                    return int(reply["pid"])
        except ConnectionError:
            # Connected, then dropped: the broker's peer check refused this uid.
            self.problem = f"it closed the connection: this uid ({os.getuid()}) is not allowed"
            return None
        except (OSError, TimeoutError, ProtocolError, KeyError, TypeError, ValueError) as exc:
            self.problem = f"no answer: {exc or type(exc).__name__}"
            return None
        finally:
            writer.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            pid = await self._ping()
            if pid is None:
                if self._state is not None and self._state[0] == "running":
                    log.error(
                        "the broker at %s stopped answering: %s", self.socket_path, self.problem
                    )
                self._report("unreachable", None)
            else:
                self._report("running", pid)

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        self._report("stopped", None)
