"""The proxy's audit writer: each record is handed to the kernel before the answer it
describes is complete, so a killed proxy never leaves an answered call unrecorded; fsyncs
are grouped by a background task, so the disk sets no pace.

A request's record is written with every other record finished in the same turn of the
event loop, in one write(), and its answer waits for that write (`commit`). A write() per
record cost 64 us of proxy CPU per request at 32 connections on the bench machine (an
append to ext4 is far dearer under load than alone); one per turn brings the durable path
back to what queuing records after the answer cost.

When a write fails (disk full, file unwritable), the record is held in memory, the writer
says it is unavailable (the edge then refuses calls 503 `audit_unavailable`, injecting
nothing), and a retry every RETRY_INTERVAL writes what is held, in order, once it can.
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
from blindkey.audit.flags import FlagTracker
from blindkey.audit.record import AuditRecord
from blindkey.audit.store import AuditLog, audit_file

__all__ = ["AuditWriter", "audit_file"]

log = logging.getLogger("blindkey.audit")
GROUP_WINDOW = 0.002
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
    ) -> None:
        self.path = audit_file(audit_dir)
        self.fsync = fsync
        self.log = AuditLog(
            audit_dir, rotate_bytes=int(rotate_mb * (1 << 20)), keep_days=keep_days, hold=True
        )
        self.tracker = FlagTracker(clock=clock)
        self.held: deque[dict[str, Any]] = deque()
        self.dropped = 0  # records beyond MAX_HELD while unavailable
        self.failures = 0  # writes that failed (each such record is held, not lost)
        self.error: str | None = None
        self.unavailable_since: float | None = None
        # Told when the state changes (the server rewrites its status file).
        self.on_state: Callable[[], None] | None = None
        # Given the chain's head now and then, to keep where this writer cannot rewrite it.
        self.anchor: Callable[[int, str], Awaitable[None]] | None = None
        self.anchored = Head()
        self._unsynced = False
        self._wake: asyncio.Event | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._last_anchor = 0.0
        self._recheck: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
            "dropped": self.dropped,
            "seq": self.log.head.seq,
        }

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            self.log.open()
            self._learn()
        except OSError as exc:
            self._failed(exc)
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def _learn(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.stat().st_size > LEARN_LIMIT:
                return
            records = []
            for line in self.path.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    value = orjson.loads(line)
                    if isinstance(value, dict):
                        records.append(value)
            self.tracker.learn(records)

    def _finish(self, record: AuditRecord) -> dict[str, Any]:
        values = record.finish()
        values["flags"] = self.tracker.flags(values)
        return values

    def seal(self, record: AuditRecord) -> dict[str, Any] | None:
        """Finish `record`, flag it and write it now. None once written; else the record as
        held (the writer is unavailable until the disk takes it), for the caller to say
        what the agent got instead."""
        values = self._finish(record)
        return None if self.submit(values) else values

    async def commit(self, record: AuditRecord) -> dict[str, Any] | None:
        """As `seal`, but written with the other records finished in this turn of the loop:
        one write() for all of them once the turn's callbacks have run, and none of their
        callers goes on (answers) before it. A caller cancelled meanwhile leaves its record
        to be written all the same."""
        values = self._finish(record)
        if self._loop is None or self.held:
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
        if not self.held:
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
        if len(self.held) >= MAX_HELD:
            self.dropped += 1
            return
        self.held.append(record)

    def _written(self) -> None:
        self._unsynced = True
        if self._wake is not None and not self._wake.is_set():
            self._wake.set()

    def _failed(self, exc: OSError) -> None:
        self.failures += 1
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
        if changed or self.held:
            self._tell()  # the status file shows how many records wait
        if self._wake is not None:
            self._wake.set()

    def _tell(self) -> None:
        if self.on_state is not None:
            self.on_state()

    def _retry(self) -> None:
        """Write what is held, in order; back to available once it all went."""
        if self.held:
            try:
                self.log.append(list(self.held))
            except OSError as exc:
                self._failed(exc)
                return
            self.held.clear()
            self._written()
        elif not self.log.opened:
            try:
                self.log.open()
            except OSError as exc:
                self._failed(exc)
                return
        if self.error is not None:
            log.warning("audit writable again after %s: calls are served", self.error)
            self.error = self.unavailable_since = None
            if self.dropped:
                log.error("%d audit records beyond %d held were not kept", self.dropped, MAX_HELD)
            self._tell()

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if self.available else RETRY_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(GROUP_WINDOW)  # one fsync for what arrives meanwhile
            self.log.release()  # other writers (broker, CLI) wait at most one group
            if not self.available:
                self._retry()
            waiters, self._waiters = self._waiters, []
            if self._unsynced and self.fsync:
                self._unsynced = False
                try:
                    await loop.run_in_executor(None, self.log.sync)
                except OSError as exc:
                    log.error("audit fsync failed: %s", exc.strerror)
                    self._failed(exc)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            await self._anchor_now(loop.time())

    async def _anchor_now(self, now: float, *, force: bool = False) -> None:
        if self.anchor is None or not self.log.opened:
            return
        if not force and now - self._last_anchor < ANCHOR_INTERVAL:
            if self._wake is not None and self._recheck is None:  # come back for it
                self._recheck = asyncio.get_running_loop().call_later(
                    ANCHOR_INTERVAL, self._anchor_due
                )
            return
        try:
            head = self.log.refresh()  # counts the records of other writers too
        except OSError:
            return
        if head == self.anchored or head.seq == 0:
            return
        self._last_anchor = now
        with contextlib.suppress(Exception):
            async with asyncio.timeout(ANCHOR_TIMEOUT):
                await self.anchor(head.seq, head.chain)
            self.anchored = head

    async def anchor_now(self) -> None:
        """Give the anchor the chain's head now (before the broker stops)."""
        await self._anchor_now(0.0, force=True)

    def _anchor_due(self) -> None:
        self._recheck = None
        if self._wake is not None:
            self._wake.set()

    async def flush(self) -> None:
        """Wait until everything written so far is fsync'd (held records stay held)."""
        self._write_turn()
        if self._task is None or self._wake is None:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    async def close(self) -> None:
        """Write what is held if the disk takes it now, fsync, anchor, then stop."""
        self._write_turn()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if not self.available:
            self._retry()
        if self.held:
            # The last place left: the service log (records never hold a value).
            log.error("audit still unwritable at shutdown: %d records follow", len(self.held))
            for record in self.held:
                log.error("unwritten audit record: %s", orjson.dumps(record).decode())
        with contextlib.suppress(OSError):
            self.log.sync()
        with contextlib.suppress(Exception):
            await self._anchor_now(0.0, force=True)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.log.close()
