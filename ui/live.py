"""Live calls: the audit's request records as they are written, sent as server-sent events.

Each stream reads the current audit file from the offset the page was rendered at, on
the event loop (appends are small reads of a regular file), and follows a rotation by
finishing the renamed file before starting the new one. The records are what `proxy
logs` shows; no record holds a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from blindkey.audit.reader import Filter, last_records
from blindkey.audit.store import audit_file

INTERVAL = 0.25
BLOCK = 1 << 16
SHOWN = ("ts", "agent", "method", "host", "url", "secrets", "decision", "status", "reason",
         "duration_ms", "flags", "seq")  # fmt: skip


def is_call(record: dict[str, Any]) -> bool:
    return bool(record.get("event", "request") == "request")


def row(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in SHOWN}


def recent_calls(audit_dir: Path, count: int = 50) -> tuple[list[dict[str, Any]], int]:
    """The last `count` calls, newest last, and the offset to follow from."""
    if not audit_file(audit_dir).exists():
        return [], 0
    records, end = last_records(audit_dir, Filter(), count * 4)
    return [row(r) for r in records if is_call(r)][-count:], end


def _records(lines: bytes) -> list[dict[str, Any]]:
    found = []
    for line in lines.split(b"\n"):
        with contextlib.suppress(orjson.JSONDecodeError):
            record = orjson.loads(line) if line.strip() else None
            if isinstance(record, dict) and is_call(record):
                found.append(row(record))
    return found


def _same_file(handle: BinaryIO, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False


async def calls_after(audit_dir: Path, start: int) -> AsyncIterator[dict[str, Any]]:
    """Calls appended after byte `start` of the current audit file, forever."""
    path = audit_file(audit_dir)
    handle: BinaryIO | None = None
    pending = b""
    try:
        while True:
            if handle is None:
                try:
                    handle = path.open("rb")
                except FileNotFoundError:
                    await asyncio.sleep(INTERVAL)
                    continue
                size = os.fstat(handle.fileno()).st_size
                handle.seek(start if start <= size else 0)
                start = 0  # a file after this one is read from its start
            chunk = handle.read(BLOCK)
            if chunk:
                complete, _, pending = (pending + chunk).rpartition(b"\n")
                for record in _records(complete):
                    yield record
                continue
            if not _same_file(handle, path):
                for record in _records(pending + handle.read()):
                    yield record
                handle.close()
                handle, pending = None, b""
                continue
            await asyncio.sleep(INTERVAL)
    finally:
        if handle is not None:
            handle.close()
