"""One thread per destination: read what it has not received from the audit files, send
it, move its cursor, again. Never on the event loop and never waited for by a call: the
writer only wakes it (an Event set once per batch at most), and its cost is a read, an
encode and a send per batch of up to MAX_RECORDS, its pace at most one batch per
BATCH_DELAY while records keep coming. A failed batch is sent again after a pause that
doubles up to MAX_BACKOFF; the records wait in the audit file meanwhile, not in memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from blindkey.audit.ship.cursor import Position, cursor_file, load_cursor, save_cursor
from blindkey.audit.ship.source import Batch, Record, Source
from blindkey.audit.ship.syslog import ShipError

log = logging.getLogger("blindkey.audit")
MAX_RECORDS = 2000
MAX_BYTES = 2 << 20
# After a wake-up: the records written meanwhile go in the same batch, so the costs of a
# batch (a look at the files, a connection, the cursor's write) are paid a few times a
# second, not per record.
BATCH_DELAY = 0.2
# The cursor is written after every batch (a killed proxy resumes exactly after it: the
# page cache keeps it) and fsync'd at most this often: a power cut repeats at most the
# batches of this last second, without a fsync per batch beside the audit writer's own.
CURSOR_SYNC = 1.0
POLL = 1.0  # records of other writers (broker, CLI) are seen within this without a wake-up
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 30.0
STOP_DEADLINE = 5.0  # at stop: the time left to send what is written


class Sink(Protocol):
    def deliver(self, records: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


class Reader(Protocol):
    def read(self, after: Position, max_records: int, max_bytes: int) -> Batch: ...


class Shipper(threading.Thread):
    def __init__(
        self,
        kind: str,
        url: str,
        sink: Sink,
        audit_dir: Path,
        *,
        sync: bool = True,
        clock: Callable[[], float] = time.time,
        source: Reader | None = None,
    ) -> None:
        super().__init__(name=f"audit-ship-{kind}", daemon=True)
        self.kind, self.url, self.sink = kind, url, sink
        self.path = cursor_file(audit_dir, kind)
        self.source = source or Source(audit_dir, sync=sync)
        self.clock = clock
        self.cursor = load_cursor(self.path, url)
        self.wanted = threading.Event()
        self.stopping = threading.Event()
        self.deadline: float | None = None
        self.backoff = 0.0
        self.synced_at = 0.0

    def wake(self) -> None:
        """From the audit writer, after an append (cheap: called per write)."""
        if not self.wanted.is_set():
            self.wanted.set()

    def run(self) -> None:
        try:
            self._shipping()
        finally:
            self.sink.close()
            with contextlib.suppress(OSError):  # on the disk as it ends (logged otherwise)
                save_cursor(self.path, self.cursor)

    def _shipping(self) -> None:
        while not self._past_deadline():
            try:
                shipped = self._ship_once()
            except ShipError as exc:
                self._failed(str(exc))
                continue
            except OSError as exc:  # the audit or the cursor file: said, tried again
                self._failed(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
                continue
            if shipped >= MAX_RECORDS or (shipped and self.stopping.is_set()):
                continue  # more may be waiting: no pause
            if self.stopping.is_set():
                return  # everything written is shipped
            self.wanted.wait(POLL)
            self.wanted.clear()
            self.stopping.wait(BATCH_DELAY)

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _ship_once(self) -> int:
        """Send the next batch; how many records it held."""
        batch = self.source.read(self.cursor.at, MAX_RECORDS, MAX_BYTES)
        if batch.note is not None and batch.note != self.cursor.note:
            log.warning("audit shipping to %s: %s", self.url, batch.note)
            self.cursor = replace(self.cursor, note=batch.note)
        if not batch.records:
            if batch.end != self.cursor.at:  # found again by seq: no need to look again
                self.cursor = replace(self.cursor, at=batch.end)
            return 0
        try:
            self.sink.deliver(batch.records)
        except ShipError as exc:
            if exc.delivered:  # those are not sent again
                self._moved(batch.records[exc.delivered - 1].end, durable=True)
            raise
        self._moved(batch.end)
        if self.backoff:
            log.warning("audit shipping to %s works again", self.url)
        self.backoff = 0.0
        return len(batch.records)

    def _moved(self, end: Position, *, durable: bool = False) -> None:
        self.cursor = self.cursor.moved(end, self.clock())
        durable = durable or self.stopping.is_set()
        durable = durable or time.monotonic() - self.synced_at >= CURSOR_SYNC
        save_cursor(self.path, self.cursor, durable=durable)
        if durable:
            self.synced_at = time.monotonic()

    def _failed(self, error: str) -> None:
        if self.cursor.error != error:
            log.error("audit shipping to %s: %s", self.url, error)
        self.cursor = self.cursor.failed(error, self.clock())
        with contextlib.suppress(OSError):  # logged; status shows the error before it
            save_cursor(self.path, self.cursor, durable=False)
        self.backoff = min(MAX_BACKOFF, self.backoff * 2 or FIRST_BACKOFF)
        if self.deadline is not None:
            self.deadline = 0.0  # stopping and the destination fails: stop now
            return
        self.stopping.wait(self.backoff)

    def request_stop(self, within: float = STOP_DEADLINE) -> None:
        """Send what is written if the destination takes it `within` seconds, then end (0:
        end after the batch in flight)."""
        self.deadline = time.monotonic() + within
        self.stopping.set()
        self.wanted.set()

    def stop(self, within: float = STOP_DEADLINE) -> None:
        self.request_stop(within)
        if self.is_alive():
            self.join(STOP_DEADLINE + 1)  # a batch in flight is confirmed (or not) first
