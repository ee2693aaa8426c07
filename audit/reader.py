"""Reading and filtering audit records for `proxy logs`."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from blindkey.audit.store import audit_files, rotated_files
from blindkey.config.errors import UsageError

_RELATIVE = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`1h`, `30m`, `2d`, or an RFC 3339 time such as `2026-11-21T10:00Z`."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        return now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise UsageError(
            f"--since {text!r}: use a duration (30m, 1h, 2d) or a time (2026-11-21T10:00Z)"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def record_time(record: dict[str, Any]) -> datetime:
    moment = datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _is_record(value: object) -> bool:
    """Shaped like what the writer writes, so filters and the table can rely on it."""
    if not isinstance(value, dict) or not isinstance(value.get("ts"), str):
        return False
    secrets = value.get("secrets", [])
    if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
        return False
    try:
        record_time(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Filter:
    secret: str | None = None
    agent: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    flagged: bool = False

    def accepts(self, record: dict[str, Any]) -> bool:
        # Event records (grants, exec, config...) lack request fields: .get() throughout.
        if self.secret is not None and self.secret not in (record.get("secrets") or []):
            return False
        if self.agent is not None and record.get("agent") != self.agent:
            return False
        if self.status is not None and record.get("decision") != self.status:
            return False
        if self.flagged and not record.get("flags"):
            return False
        if self.since is not None and record_time(record) < self.since:
            return False
        return self.until is None or record_time(record) < self.until


def _parse_lines(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut by a full disk; the rest of the file still reads
        if _is_record(record):  # not a record (written by hand?): skipped like a torn line
            yield record


# Files are read a block at a time: memory stays flat over any number of records.
BLOCK = 1 << 20


def _whole_lines(path: Path, end: int | None = None) -> Iterator[bytes]:
    """The complete lines of `path` up to byte `end` (a line not ended by a newline, being
    written now or torn, is not one), oldest first, one block in memory at a time."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        pending = b""
        remaining = end
        while remaining is None or remaining > 0:
            block = handle.read(BLOCK if remaining is None else min(BLOCK, remaining))
            if not block:
                return
            if remaining is not None:
                remaining -= len(block)
            *lines, pending = (pending + block).split(b"\n")
            yield from lines


def end_of_whole_lines(path: Path) -> int:
    """The offset just past the last newline of `path` (0 when it has none or is gone)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return 0
    with handle:
        position = handle.seek(0, os.SEEK_END)
        while position > 0:
            start = max(0, position - BLOCK)
            handle.seek(start)
            block = handle.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            position = start
    return 0


def iter_records(path: Path, selection: Filter, end: int | None = None) -> Iterator[dict[str, Any]]:
    """The matching records of every complete line of `path` (up to `end`), oldest first."""
    return (r for r in _parse_lines(_whole_lines(path, end)) if selection.accepts(r))


def read_records(path: Path, selection: Filter) -> tuple[list[dict[str, Any]], int]:
    """The matching records of every complete line, and the offset just past them.

    Following from that offset neither repeats nor skips a record appended meanwhile.
    """
    end = end_of_whole_lines(path)
    return list(iter_records(path, selection, end)), end


def iter_all(
    audit_dir: Path, selection: Filter, paths: list[Path] | None = None
) -> tuple[Iterator[dict[str, Any]], int]:
    """The matching records of every audit file, oldest first (rotated ones included),
    streamed (what the caller keeps is all that stays in memory), and the offset just past
    the last whole line of the current file when the call was made, which the stream stops
    at: following from there neither repeats nor skips a record appended meanwhile."""
    files = paths if paths is not None else audit_files(audit_dir)
    if not files:
        return iter(()), 0
    end = end_of_whole_lines(files[-1])

    def stream() -> Iterator[dict[str, Any]]:
        for path in files[:-1]:
            yield from iter_records(path, selection)
        yield from iter_records(files[-1], selection, end)

    return stream(), end


def _lines_backwards(path: Path, end: int) -> Iterator[bytes]:
    """The complete lines of `path` before byte `end`, newest first."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        position, pending = end, b""
        while position > 0:
            start = max(0, position - BLOCK)
            handle.seek(start)
            lines = (handle.read(position - start) + pending).split(b"\n")
            position = start
            pending = lines.pop(0) if position > 0 else b""
            yield from reversed(lines)
        if pending:
            yield pending


def last_records(
    audit_dir: Path, selection: Filter, count: int
) -> tuple[list[dict[str, Any]], int]:
    """The last `count` matching records, oldest first, read from the end of the newest file
    back (`proxy logs --last N` costs N records, not the whole audit), and the offset just
    past the last whole line of the current file, for following."""
    files = audit_files(audit_dir)
    end = end_of_whole_lines(files[-1])
    found: list[dict[str, Any]] = []
    for path in reversed(files):
        if len(found) >= count:
            break
        stop = end if path == files[-1] else end_of_whole_lines(path)
        for record in _parse_lines(_lines_backwards(path, stop)):
            if selection.accepts(record):
                found.append(record)
                if len(found) >= count:
                    break
    found.reverse()
    return found, end


def _opened(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None


def _replaced(handle: BinaryIO, path: Path) -> bool:
    """Whether `path` names another file than `handle` now (rotated, or removed)."""
    try:
        return not os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return True


def _rotated_after(done: os.stat_result, audit_dir: Path) -> list[Path]:
    """The rotated files newer than `done` (one of them, read to its end); none when it
    is not among them (removed): the current file comes next."""
    rotated = rotated_files(audit_dir)
    for index, candidate in enumerate(rotated):
        try:
            if os.path.samestat(candidate.stat(), done):
                return rotated[index + 1 :]
        except FileNotFoundError:
            continue
    return []


def _next_file(done: os.stat_result, path: Path) -> BinaryIO | None:
    """The file that follows `done`: the next rotated one, else the current file (None
    while there is none). Several rotations between two reads skip no file, and a rotation
    while the current file is opened is seen and followed."""
    while True:
        later = _rotated_after(done, path.parent)
        handle = _opened(later[0] if later else path)
        if handle is None:
            if later:
                continue  # pruned meanwhile: the one after it
            return None
        if later:
            return handle
        now_later = _rotated_after(done, path.parent)
        with contextlib.suppress(FileNotFoundError):
            if not now_later or os.path.samestat(now_later[0].stat(), os.fstat(handle.fileno())):
                return handle
        handle.close()  # the current file was rotated between the two looks: start over


def follow(
    path: Path, selection: Filter, start: int, interval: float = 0.2
) -> Iterator[dict[str, Any]]:
    """Records appended after byte offset `start`, forever, a block at a time. The file is
    opened now, so a rotation before the first record is read loses nothing; when it is
    rotated, the rest of the old file comes first, then the new one from its start (the
    open handle still reads the renamed file; nothing is written to it any more)."""
    handle = _opened(path)
    if handle is not None:
        handle.seek(start)
    return _following(path, selection, handle, start, interval)


def _following(
    path: Path, selection: Filter, handle: BinaryIO | None, start: int, interval: float
) -> Iterator[dict[str, Any]]:
    pending = b""
    done: os.stat_result | None = None  # the last file read to its end, once one was
    try:
        while True:
            if handle is None:
                handle = _opened(path) if done is None else _next_file(done, path)
                if handle is None:
                    time.sleep(interval)
                    continue
                handle.seek(start)
            start = 0  # a file that follows this one is read from its start
            chunk = handle.read(BLOCK)
            if chunk:
                pending += chunk
                complete, _, pending = pending.rpartition(b"\n")
                yield from (r for r in _parse_lines(complete.split(b"\n")) if selection.accepts(r))
            elif _replaced(handle, path):
                # Read to its end once more: a last append may have come before the rename.
                rest = pending + handle.read()
                yield from (r for r in _parse_lines(rest.split(b"\n")) if selection.accepts(r))
                done = os.fstat(handle.fileno())
                handle.close()
                handle, pending = None, b""
            else:
                time.sleep(interval)
    finally:
        if handle is not None:
            handle.close()
