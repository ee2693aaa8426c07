"""Reading and filtering audit records for `proxy logs`."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.store import audit_files
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


def _parse_lines(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut by a full disk; the rest of the file still reads
        if _is_record(record):  # not a record (written by hand?): skipped like a torn line
            yield record


def read_records(path: Path, selection: Filter) -> tuple[list[dict[str, Any]], int]:
    """The matching records of every complete line, and the offset just past them.

    Following from that offset neither repeats nor skips a record appended meanwhile.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    records = [r for r in _parse_lines(data[:end].splitlines()) if selection.accepts(r)]
    return records, end


def read_all(
    audit_dir: Path, selection: Filter, paths: list[Path] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The matching records of every audit file, oldest first (rotated ones included), and
    the offset just past the last whole line of the current file, for following."""
    records: list[dict[str, Any]] = []
    end = 0
    for path in paths if paths is not None else audit_files(audit_dir):
        found, end = read_records(path, selection)
        records.extend(found)
    return records, end


def follow(
    path: Path, selection: Filter, start: int, interval: float = 0.2
) -> Iterator[dict[str, Any]]:
    """Records appended after byte offset `start`, forever."""
    position = start
    pending = b""
    while True:
        try:
            with path.open("rb") as handle:
                handle.seek(position)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            position += len(chunk)
            pending += chunk
            complete, _, pending = pending.rpartition(b"\n")
            yield from (r for r in _parse_lines(complete.split(b"\n")) if selection.accepts(r))
        else:
            time.sleep(interval)
