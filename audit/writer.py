"""One writer task appends JSONL records; fsyncs are grouped so the disk sets no pace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.record import AuditRecord

log = logging.getLogger("blindkey.audit")
AUDIT_FILE = "audit.jsonl"
# Group commit: take whatever queued while the previous fsync ran, up to this many.
MAX_BATCH = 1024
GROUP_WINDOW = 0.002


def audit_file(audit_dir: Path) -> Path:
    return audit_dir / AUDIT_FILE


def _escaped(value: Any) -> Any:
    """`value` with every string's undecodable bytes written as \\xNN."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    return value


def _line(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record) + b"\n"
    except orjson.JSONEncodeError:
        # Text an agent sent that is not UTF-8 (kept as surrogates) is written escaped,
        # never dropped: a refused request must still leave its record.
        return orjson.dumps(_escaped(record)) + b"\n"


class AuditWriter:
    def __init__(self, audit_dir: Path, *, fsync: bool = True) -> None:
        self.path = audit_file(audit_dir)
        self.fsync = fsync
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self.failures = 0
        self._torn = False  # a failed write left part of a line at the end of the file
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # Kept: on Python 3.11 asyncio.get_running_loop() costs a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def submit(self, record: dict[str, Any]) -> None:
        self.queue.put_nowait(record)

    def submit_after_answer(self, record: AuditRecord) -> None:
        """Finish and queue `record` once the current task step is over: aiohttp writes the
        answer in that step, so the agent does not wait for the record. Its duration then
        includes writing the answer."""
        assert self._loop is not None, "AuditWriter.start() first"
        self._loop.call_soon(self._finish_and_submit, record)

    def _finish_and_submit(self, record: AuditRecord) -> None:
        self.submit(record.finish())

    def _write(self, payload: bytes) -> None:
        assert self._fd is not None
        if self._torn:
            payload = b"\n" + payload  # end the fragment, so it cannot swallow a record
        view = memoryview(payload)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            self._torn = self._torn or len(view) < len(payload)
            raise
        self._torn = False
        if self.fsync:
            os.fsync(self._fd)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        done = False
        while not done:
            batch = [await self.queue.get()]
            if batch[0] is not None:
                # Group commit in time as well as in count: one write (and fsync) for what
                # arrives meanwhile, instead of a thread hop per record.
                await asyncio.sleep(GROUP_WINDOW)
            while len(batch) < MAX_BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                done = await self._commit(loop, batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def flush(self) -> None:
        """Wait until everything submitted so far is on disk."""
        await self.queue.join()

    async def _commit(
        self, loop: asyncio.AbstractEventLoop, batch: list[dict[str, Any] | None]
    ) -> bool:
        """Write one batch; True when it carried the stop marker."""
        records = [r for r in batch if r is not None]
        lines = []
        for record in records:
            try:
                lines.append(_line(record))
            except orjson.JSONEncodeError as exc:  # one bad record must not stop auditing
                self.failures += 1
                log.error("audit record %r dropped: %s", record.get("request_id"), exc)
        if lines:
            # One write() per batch with O_APPEND: whole lines, never interleaved or torn.
            try:
                await loop.run_in_executor(None, self._write, b"".join(lines))
            except OSError as exc:
                self.failures += len(lines)
                log.error("audit write failed (%s); %d records lost", exc.strerror, len(lines))
        return len(records) != len(batch)

    async def close(self) -> None:
        """Flush everything queued, then stop."""
        if self._task is not None:
            self.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
