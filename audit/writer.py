"""The proxy's audit writer: each record is handed to the kernel before the answer it
describes is complete, so a killed proxy never leaves an answered call unrecorded; fsyncs
are grouped by a thread of their own, so the disk sets no pace.

A request's record is written with every other record finished in the same turn of the
event loop, in one write(), and its answer waits for that write (`commit`). A write() per
record cost 64 us of proxy CPU per request at 32 connections on the bench machine (an
append to ext4 is far dearer under load than alone); one per turn brings the durable path
back to what queuing records after the answer cost.

The rest runs beside the requests at no cost to each: the fsync thread (audit/fsync.py)
syncs a group window after the first write it was told of (no task, timer or executor hop
on the event loop per group), the audit lock is let go every RELEASE_INTERVAL for other
writers, and the chain's head goes to the anchor every ANCHOR_INTERVAL while records are
written.

When a write fails (disk full, file unwritable), the record is held in memory, the writer
says it is unavailable (the edge then refuses calls 503 `audit_unavailable`, injecting
nothing), and a retry every RETRY_INTERVAL writes what is held, in order, once it can, a
batch at a time, so space freed for part of the backlog is used at once. Past MAX_HELD
held records, the records that follow are counted into one `event: gap` record
(audit/outage.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.chain import Head
from blindkey.audit.flags import FlagTracker, allowed_records, load_seen, save_seen
from blindkey.audit.fsync import GroupSync
from blindkey.audit.outage import Backlog, Gap
from blindkey.audit.record import AuditRecord
from blindkey.audit.store import AuditLog, audit_file

__all__ = ["AuditWriter", "audit_file"]

log = logging.getLogger("blindkey.audit")
RELEASE_INTERVAL = 0.01  # other writers (broker, CLI) wait about this long for the audit lock
RETRY_INTERVAL = 0.25
ANCHOR_INTERVAL = 0.5
ANCHOR_TIMEOUT = 2.0
MAX_HELD = 20_000  # records held while the disk is full (about 20 MB); then counted
LEARN_LIMIT = 256 << 20  # a current file bigger than this is not read for new_host


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
        checkpoint_every: int = 1000,
        observe: Callable[[dict[str, Any]], None] | None = None,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        self.path = audit_file(audit_dir)
        self.fsync = fsync
        self.log = AuditLog(
            audit_dir,
            rotate_bytes=int(rotate_mb * (1 << 20)),
            keep_days=keep_days,
            hold=True,
            checkpoint_every=checkpoint_every,
        )
        self.tracker = FlagTracker(clock=clock)
        self.learning: asyncio.Task[None] | None = None
        self.waiting = Backlog()  # records the audit did not take yet
        self.error: str | None = None
        self.unavailable_since: float | None = None
        # Told when the state changes (the server rewrites its status file).
        self.on_state = on_state
        # Given the chain's head now and then, to keep where this writer cannot rewrite it.
        self.anchor = anchor
        # Told after each write (audit shipping: records to send).
        self.on_written = on_written
        self.anchored = Head()
        # Shown every finished record (the proxy's metrics count them); never a value.
        self.observe = observe
        self._syncer: GroupSync | None = None
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

    @property
    def held(self) -> deque[dict[str, Any]]:
        """Records held whole, in order, while the audit cannot be written."""
        return self.waiting.held

    @property
    def gap(self) -> Gap:
        """Records beyond MAX_HELD while unavailable: counted."""
        return self.waiting.gap

    @property
    def backlog(self) -> int:
        """Records waiting to be written: held whole, or counted in the gap."""
        return len(self.waiting)

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
            self._syncer = GroupSync(self.log.sync, self._loop, self._failed)
            self._syncer.start()
        self._anchor_task = asyncio.create_task(self._anchoring(), name="audit-anchor")
        try:
            self.log.open()
            # The signing key pair exists from the start: its public half can be handed
            # out before the first checkpoint is due.
            self.log.signer_ready()
            seen = load_seen(self.path.parent)
        except OSError as exc:
            self._failed(exc)
            return
        if seen is not None:
            self.tracker.seen = seen
            return
        # No file of pairs yet (an audit written before it existed): learned from the current
        # file once, off the start (64 MB take seconds); until then a call may be flagged
        # new_host that was not.
        self.learning = asyncio.create_task(self._learning(), name="audit-learn")

    async def _learning(self) -> None:
        with contextlib.suppress(OSError):
            seen = await asyncio.to_thread(self._seen_in_audit)
            self.tracker.seen |= seen  # with what calls added meanwhile
            save_seen(self.path.parent, self.tracker.seen)

    def _seen_in_audit(self) -> set[tuple[str, str]]:
        """The (secret, host) pairs of the current file, a line at a time (on a thread)."""
        if self.path.exists() and self.path.stat().st_size > LEARN_LIMIT:
            return set()
        scratch = FlagTracker()
        scratch.learn(allowed_records(self.path))
        return scratch.seen

    def _finish(self, record: AuditRecord, count: int | None = None) -> dict[str, Any]:
        values = record.finish()
        values["flags"] = flags = self.tracker.flags(values)
        if "new_host" in flags:  # rare: once per secret and host
            save_seen(self.path.parent, self.tracker.seen)
        if count is not None:
            values["count"] = count
        if self.observe is not None:
            self.observe(values)
        return values

    def lag(self) -> dict[str, int]:
        """How far the audit stands: the chain's seq, write() calls made and covered by
        an fsync, and records waiting for the disk."""
        syncer = self._syncer
        writes = syncer.writes if syncer is not None else 0
        synced = syncer.synced if syncer is not None else writes
        return {"seq": self.log.head.seq, "writes": writes, "synced": synced,
                "waiting": self.backlog}  # fmt: skip

    def seal(self, record: AuditRecord, count: int | None = None) -> dict[str, Any] | None:
        """Finish `record`, flag it and write it now. None once written; else the record as
        held (the writer is unavailable until the disk takes it), for the caller to say
        what the agent got instead. `count`: the calls a coalesced record stands for."""
        values = self._finish(record, count)
        return None if self.submit(values) else values

    async def commit(self, record: AuditRecord) -> dict[str, Any] | None:
        """As `seal`, but written with the other records finished in this turn of the loop:
        one write() for all of them once the turn's callbacks have run, and none of their
        callers goes on (answers) before it. A caller cancelled meanwhile leaves its record
        to be written all the same."""
        values = self._finish(record)
        waiting = self.waiting  # `backlog`, without its two calls: this runs per request
        if self._loop is None or waiting.held or waiting.gap.count:
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
            self.waiting.add(record, MAX_HELD)  # behind what waits, so the order stays
        return False

    def _written(self) -> None:
        if self._syncer is not None:
            self._syncer.written()
        if self.on_written is not None:
            self.on_written()
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

    def _tell(self) -> None:
        if self.on_state is not None:
            self.on_state()

    def _retry(self) -> None:
        """Write what is held, in order, a batch per write(); then the gap's record; back to
        available once it all went."""
        try:
            if not self.log.opened:
                self.log.open()
            self.waiting.write_to(self.log, self._written, MAX_HELD)
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
        if self._syncer is not None:
            await self._syncer.flush()

    async def close(self) -> None:
        """Write what is held if the disk takes it now, fsync, anchor, then stop."""
        if self.learning is not None:
            self.learning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.learning
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
            for record in self.waiting.records(MAX_HELD):
                log.error("unwritten audit record: %s", orjson.dumps(record).decode())
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            syncer.stop()
        with contextlib.suppress(OSError):
            self.log.sync()
        with contextlib.suppress(Exception):
            await self.anchor_now()
        if syncer is not None:
            syncer.release_waiters()
        self.log.close()
