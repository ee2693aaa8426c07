"""The proxy's audit writer: each record is handed to the kernel before the answer it
describes is complete, so a killed proxy never leaves an answered call unrecorded; fsyncs
are grouped by a thread of their own, so the disk sets no pace.

A request's record is written with every other record finished in the same turn of the
event loop, in one write(), and its answer waits for that write (`commit`). A write() per
record cost 64 us of proxy CPU per request at 32 connections on the bench machine (an
append to ext4 is far dearer under load than alone); one per turn brings the durable path
back to what queuing records after the answer cost.

The rest runs beside the requests at no cost to each: the fsync thread syncs GROUP_WINDOW
after the first write it was told of (no task, timer or executor hop on the event loop per
group), the audit lock is let go every RELEASE_INTERVAL for other writers, and the chain's
head goes to the anchor every ANCHOR_INTERVAL while records are written.

When a write fails (disk full, file unwritable), the record is held in memory, the writer
says it is unavailable (the edge then refuses calls 503 `audit_unavailable`, injecting
nothing), and a retry every RETRY_INTERVAL writes what is held, in order, once it can, a
batch at a time, so space freed for part of the backlog is used at once. Past MAX_HELD
held records, the records that follow (refusals: nothing is injected meanwhile) are counted
into one `event: gap` record, written after the held ones: no answered call goes
unaccounted, and `audit verify` reports how many are known only by that count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.chain import Head
from blindkey.audit.flags import FlagTracker, allowed_records, load_seen, save_seen
from blindkey.audit.record import AuditRecord
from blindkey.audit.store import AuditLog, audit_file

__all__ = ["AuditWriter", "audit_file"]

log = logging.getLogger("blindkey.audit")
# One fsync for what is written within this long. The queue this thread replaced slept on
# the event loop, whose timers fire late under load; 2 ms kept exactly here spent twice its
# time in fsync at 32 connections (py-spy: 806-925 samples of this thread against 429-448
# of the queue's executor) and cost 26 % of req/s against fsync off (bench, 5 rounds).
GROUP_WINDOW = 0.005
RELEASE_INTERVAL = 0.01  # other writers (broker, CLI) wait about this long for the audit lock
RETRY_INTERVAL = 0.25
ANCHOR_INTERVAL = 0.5
ANCHOR_TIMEOUT = 2.0
MAX_HELD = 20_000  # records held while the disk is full (about 20 MB); then counted
RETRY_BATCH = 256  # held records per write() when the backlog is written again
LEARN_LIMIT = 256 << 20  # a current file bigger than this is not read for new_host


class _Syncer(threading.Thread):
    """fsyncs the audit GROUP_WINDOW after the first write it is told of: one fsync for
    every record written meanwhile. The event loop only sets an Event once per group."""

    def __init__(self, writer: AuditWriter, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="audit-fsync", daemon=True)
        self.writer = writer
        self.loop = loop
        self.wanted = threading.Event()
        self.stopping = False
        self.synced = 0  # the writer's count of writes covered by the last good fsync

    def run(self) -> None:
        writer = self.writer
        while True:
            self.wanted.wait()
            if self.stopping:
                return
            time.sleep(GROUP_WINDOW)
            self.wanted.clear()
            target = writer.writes
            try:
                writer.log.sync()
            except OSError as exc:
                if self.stopping:
                    return
                self.loop.call_soon_threadsafe(writer.sync_failed, exc)
                continue
            self.synced = target
            if self.stopping:  # its wake-up may have been cleared above
                return
            if writer.flushes:
                self.loop.call_soon_threadsafe(writer.synced)

    def stop(self) -> None:
        self.stopping = True
        self.wanted.set()
        self.join()


class Gap:
    """Records that came while the audit could not be written and MAX_HELD were held: kept
    as counts (by decision, reason and agent) and the span of time they cover."""

    KEYS = 64  # distinct reasons or agents counted by name; the rest under "other"

    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None
        self.last: str | None = None
        self.reasons: dict[str, int] = {}
        self.agents: dict[str, int] = {}

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        moment = str(record.get("ts", ""))
        self.first = self.first or moment
        self.last = moment
        reason = str(record.get("reason") or record.get("decision") or record.get("event"))
        self._tally(self.reasons, reason)
        self._tally(self.agents, str(record.get("agent") or "-"))

    def _tally(self, table: dict[str, int], key: str) -> None:
        if key not in table and len(table) >= self.KEYS:
            key = "other"
        table[key] = table.get(key, 0) + 1

    def record(self) -> dict[str, Any]:
        return {
            "ts": self.last,
            "event": "gap",
            "count": self.count,
            "first_ts": self.first,
            "last_ts": self.last,
            "reasons": self.reasons,
            "agents": self.agents,
            "detail": f"{self.count} records beyond the {MAX_HELD} held while the audit could "
            "not be written are known only by these counts",
        }


class AuditWriter:
    def __init__(
        self,
        audit_dir: Path,
        *,
        fsync: bool = True,
        rotate_mb: float = 64,
        keep_days: float = 90,
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[], None] | None = None,
        anchor: Callable[[int, str], Awaitable[None]] | None = None,
    ) -> None:
        self.path = audit_file(audit_dir)
        self.fsync = fsync
        self.log = AuditLog(
            audit_dir, rotate_bytes=int(rotate_mb * (1 << 20)), keep_days=keep_days, hold=True
        )
        self.tracker = FlagTracker(clock=clock)
        self.held: deque[dict[str, Any]] = deque()
        self.gap = Gap()  # records beyond MAX_HELD while unavailable: counted
        self.error: str | None = None
        self.unavailable_since: float | None = None
        # Told when the state changes (the server rewrites its status file).
        self.on_state = on_state
        # Given the chain's head now and then, to keep where this writer cannot rewrite it.
        self.anchor = anchor
        self.anchored = Head()
        self.writes = 0  # successful writes; the fsync thread says how many it covered
        # flush() callers: the count of writes each waits to see synced.
        self.flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._syncer: _Syncer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._anchor_task: asyncio.Task[None] | None = None
        # Records finished in this turn of the loop, and the callers waiting for their write.
        self._turn: list[dict[str, Any]] = []
        self._turn_waiters: list[asyncio.Future[bool]] = []

    @property
    def available(self) -> bool:
        return self.error is None

    def state(self) -> dict[str, Any]:
        """For the status file: `proxy status` shows an alert when not ok."""
        return {
            "state": "ok" if self.available else "unavailable",
            "error": self.error,
            "since": self.unavailable_since,
            "held": len(self.held),
            "counted": self.gap.count,
            "seq": self.log.head.seq,
        }

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.fsync:
            self._syncer = _Syncer(self, self._loop)
            self._syncer.start()
        self._anchor_task = asyncio.create_task(self._anchoring(), name="audit-anchor")
        try:
            self.log.open()
            self._learn()
        except OSError as exc:
            self._failed(exc)

    def _learn(self) -> None:
        seen = load_seen(self.path.parent)
        if seen is not None:
            self.tracker.seen = seen
            return
        # No file of pairs yet (an audit written before it existed): learn from the current
        # file once, a line at a time, and keep what was learnt.
        with contextlib.suppress(OSError):
            if self.path.stat().st_size > LEARN_LIMIT:
                return
        self.tracker.learn(allowed_records(self.path))
        save_seen(self.path.parent, self.tracker.seen)

    def _finish(self, record: AuditRecord) -> dict[str, Any]:
        values = record.finish()
        values["flags"] = flags = self.tracker.flags(values)
        if "new_host" in flags:  # rare: once per secret and host
            save_seen(self.path.parent, self.tracker.seen)
        return values

    def seal(self, record: AuditRecord, count: int | None = None) -> dict[str, Any] | None:
        """Finish `record`, flag it and write it now. None once written; else the record as
        held (the writer is unavailable until the disk takes it), for the caller to say
        what the agent got instead. `count`: the calls a coalesced record stands for."""
        values = self._finish(record)
        if count is not None:
            values["count"] = count
        return None if self.submit(values) else values

    async def commit(self, record: AuditRecord) -> dict[str, Any] | None:
        """As `seal`, but written with the other records finished in this turn of the loop:
        one write() for all of them once the turn's callbacks have run, and none of their
        callers goes on (answers) before it. A caller cancelled meanwhile leaves its record
        to be written all the same."""
        values = self._finish(record)
        if self._loop is None or self.backlog:
            return None if self.submit(values) else values
        waiter = self._loop.create_future()
        self._turn.append(values)
        self._turn_waiters.append(waiter)
        if len(self._turn) == 1:
            self._loop.call_soon(self._write_turn)
        return None if await waiter else values

    def _write_turn(self) -> None:
        records, waiters = self._turn, self._turn_waiters
        self._turn, self._turn_waiters = [], []
        if not records:
            return
        written = self._write(records)
        for waiter in waiters:
            if not waiter.done():  # its caller was cancelled: the record is written anyway
                waiter.set_result(written)

    def submit(self, record: dict[str, Any]) -> bool:
        """Write one record now (before the caller answers anyone); False if it is held."""
        record.setdefault("event", "request")
        return self._write([record])

    @property
    def backlog(self) -> int:
        """Records waiting to be written: held whole, or counted in the gap."""
        return len(self.held) + self.gap.count

    def _write(self, records: list[dict[str, Any]]) -> bool:
        """One write() for `records`; False when they are held instead (in this order)."""
        if not self.backlog:
            try:
                self.log.append(records)
            except OSError as exc:
                self._failed(exc)
            else:
                self._written()
                return True
        for record in records:
            self._hold(record)  # behind what waits, so the order stays
        return False

    def _hold(self, record: dict[str, Any]) -> None:
        if len(self.held) >= MAX_HELD or self.gap.count:
            self.gap.add(record)  # once counting began, every later record is counted
            return
        self.held.append(record)

    def _written(self) -> None:
        self.writes += 1
        if self._syncer is not None and not self._syncer.wanted.is_set():
            self._syncer.wanted.set()
        if self._release_timer is None and self._loop is not None:
            self._release_timer = self._loop.call_later(RELEASE_INTERVAL, self._release)

    def _release(self) -> None:
        self._release_timer = None
        self.log.release()

    def _failed(self, exc: OSError) -> None:
        error = exc.strerror or type(exc).__name__
        if self.error is None:
            self.unavailable_since = time.time()
            log.error(
                "audit unavailable (%s): calls are refused 503 audit_unavailable until "
                "records can be written to %s",
                error,
                self.path,
            )
        changed = error != self.error
        self.error = error
        if changed or self.backlog:
            self._tell()  # the status file shows how many records wait
        if self._retry_timer is None and self._loop is not None:
            self._retry_timer = self._loop.call_later(RETRY_INTERVAL, self._retry_due)

    def _retry_due(self) -> None:
        self._retry_timer = None
        if not self.available:
            self._retry()  # schedules the next try itself if this one fails

    def sync_failed(self, exc: OSError) -> None:
        """From the fsync thread: what was written may not be on the disk."""
        log.error("audit fsync failed: %s", exc.strerror)
        self._failed(exc)
        for _, waiter in self.flushes:  # no fsync to wait for: the writer says unavailable
            if not waiter.done():
                waiter.set_result(None)
        self.flushes = []

    def synced(self) -> None:
        """From the fsync thread: wake the flush() callers it covered."""
        done = self._syncer.synced if self._syncer is not None else self.writes
        waiting = []
        for target, waiter in self.flushes:
            if target <= done:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self.flushes = waiting

    def _tell(self) -> None:
        if self.on_state is not None:
            self.on_state()

    def _retry(self) -> None:
        """Write what is held, in order, a batch per write(); then the gap's record; back to
        available once it all went."""
        size = RETRY_BATCH
        try:
            if not self.log.opened:
                self.log.open()
            while self.held:
                batch = [self.held[i] for i in range(min(size, len(self.held)))]
                try:
                    self.log.append(batch)
                except OSError:
                    if size == 1:
                        raise
                    size //= 2  # less room than the batch needs: use what there is
                    continue
                for _ in batch:
                    self.held.popleft()
                self._written()
            if self.gap.count:
                self.log.append([self.gap.record()])
                self.gap = Gap()
                self._written()
        except OSError as exc:
            self._failed(exc)
            return
        if self.error is not None:
            log.warning("audit writable again after %s: calls are served", self.error)
            self.error = self.unavailable_since = None
            self._tell()

    async def _anchoring(self) -> None:
        while True:
            await asyncio.sleep(ANCHOR_INTERVAL)
            await self.anchor_now()

    async def anchor_now(self) -> None:
        """Give the anchor the chain's head if it moved (every ANCHOR_INTERVAL, and before
        the broker stops)."""
        if self.anchor is None or not self.log.opened:
            return
        try:
            head = self.log.refresh()  # counts the records of other writers too
        except OSError:
            return
        if head == self.anchored or head.seq == 0:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(ANCHOR_TIMEOUT):
                await self.anchor(head.seq, head.chain)
            self.anchored = head

    async def flush(self) -> None:
        """Wait until everything written so far is fsync'd (held records stay held)."""
        self._write_turn()
        syncer = self._syncer
        if syncer is None or syncer.synced >= self.writes:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.flushes.append((self.writes, waiter))
        syncer.wanted.set()
        await waiter

    async def close(self) -> None:
        """Write what is held if the disk takes it now, fsync, anchor, then stop."""
        self._write_turn()
        if self._anchor_task is not None:
            self._anchor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._anchor_task
            self._anchor_task = None
        for timer in (self._release_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        self._release_timer = self._retry_timer = None
        if not self.available:
            self._retry()
            if self._retry_timer is not None:
                self._retry_timer.cancel()
                self._retry_timer = None
        if self.backlog:
            # The last place left: the service log (records never hold a value).
            log.error("audit still unwritable at shutdown: %d records follow", self.backlog)
            for record in [*self.held, *([self.gap.record()] if self.gap.count else [])]:
                log.error("unwritten audit record: %s", orjson.dumps(record).decode())
        if self._syncer is not None:
            self._syncer.stop()  # at most one group window and an fsync away
            self._syncer = None
        with contextlib.suppress(OSError):
            self.log.sync()
        with contextlib.suppress(Exception):
            await self.anchor_now()
        for _, waiter in self.flushes:
            if not waiter.done():
                waiter.set_result(None)
        self.flushes = []
        self.log.close()
