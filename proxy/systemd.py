"""systemd's notify protocol: READY=1 once /health would answer, WATCHDOG=1 from the event
loop (so a wedged loop stops the pings and systemd restarts the service), STOPPING=1 when
shutting down. A datagram to $NOTIFY_SOCKET is all it takes; no libsystemd.

Without $NOTIFY_SOCKET (not started by systemd with Type=notify) every call does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger("blindkey.proxy")


class ServiceNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An address starting with "@" is in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        meant_for_us = not pid or pid == str(os.getpid())
        # Pinged at half the interval systemd waits, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = (
            int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and meant_for_us else None
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:  # the service manager went away: nothing to tell
            log.warning("cannot notify the service manager: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        if self.watchdog_interval is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._watchdog(self.watchdog_interval), name="systemd-watchdog"
            )

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stopping(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.send("STOPPING=1")
