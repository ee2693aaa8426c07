"""The audit writer's group commit: a thread of its own fsyncs the audit GROUP_WINDOW after
the first write it is told of, one fsync for every record written meanwhile. The event loop
only sets an Event once per group (no task, timer or executor hop per group), and `flush()`
callers wait for the fsync that covers what was written before they called.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("blindkey.audit")
# One fsync for what is written within this long. The queue this thread replaced slept on
# the event loop, whose timers fire late under load; 2 ms kept exactly here spent twice its
# time in fsync at 32 connections (py-spy: 806-925 samples of this thread against 429-448
# of the queue's executor) and cost 26 % of req/s against fsync off (bench, 5 rounds).
GROUP_WINDOW = 0.005


class GroupSync(threading.Thread):
    """Calls `sync` (an fsync of the audit) in groups; `failed` hears on the event loop
    when one fails, so the writer says the audit is unavailable."""

    def __init__(
        self,
        sync: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        failed: Callable[[OSError], None],
    ) -> None:
        super().__init__(name="audit-fsync", daemon=True)
        self._sync = sync
        self.loop = loop
        self.failed = failed
        self.wanted = threading.Event()
        self.stopping = False
        self.writes = 0  # writes told of by the event loop
        self.synced = 0  # of those, the ones covered by the last good fsync
        # flush() callers: the count of writes each waits to see synced.
        self.flushes: list[tuple[int, asyncio.Future[None]]] = []

    def written(self) -> None:
        """From the event loop, after each write that reached the kernel."""
        self.writes += 1
        if not self.wanted.is_set():
            self.wanted.set()

    def run(self) -> None:
        while True:
            self.wanted.wait()
            if self.stopping:
                return
            time.sleep(GROUP_WINDOW)
            self.wanted.clear()
            target = self.writes
            try:
                self._sync()
            except OSError as exc:
                if self.stopping:
                    return
                self.loop.call_soon_threadsafe(self._sync_failed, exc)
                continue
            self.synced = target
            if self.stopping:  # its wake-up may have been cleared above
                return
            if self.flushes:
                self.loop.call_soon_threadsafe(self._wake)

    def _sync_failed(self, exc: OSError) -> None:
        """What was written may not be on the disk."""
        log.error("audit fsync failed: %s", exc.strerror)
        self.failed(exc)
        self.release_waiters()  # no fsync to wait for: the writer says unavailable

    def _wake(self) -> None:
        """Wake the flush() callers the last fsync covered."""
        waiting = []
        for target, waiter in self.flushes:
            if target <= self.synced:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self.flushes = waiting

    async def flush(self) -> None:
        """Wait until every write told of so far is fsync'd."""
        if self.synced >= self.writes:
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.flushes.append((self.writes, waiter))
        self.wanted.set()
        await waiter

    def release_waiters(self) -> None:
        for _, waiter in self.flushes:
            if not waiter.done():
                waiter.set_result(None)
        self.flushes = []

    def stop(self) -> None:
        """At most one group window and an fsync away."""
        self.stopping = True
        self.wanted.set()
        self.join()
