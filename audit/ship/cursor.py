"""What a destination has received: the seq of the last record it confirmed and where the
record after it starts, written (fsync'd, replaced whole) after each confirmed batch, so a
restart resumes with the next record, neither repeating nor skipping one.

The seq is the truth, the file and offset only a shortcut to it: a cursor whose file is gone
or whose offset no longer ends that record is found again by seq (audit/ship/source.py).
The same file keeps the last error, for `audit ship status`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

SHIP_DIR = "ship"  # under the audit directory: one <destination kind>.json each


def cursor_file(audit_dir: Path, kind: str) -> Path:
    return audit_dir / SHIP_DIR / f"{kind}.json"


@dataclass(frozen=True)
class Position:
    """Just past record `seq` (0: before the first record): in the file of `inode`, at
    byte `offset`. `ts` is that record's time."""

    seq: int = 0
    inode: int = 0
    offset: int = 0
    ts: str = ""


@dataclass(frozen=True)
class Cursor:
    url: str
    at: Position = field(default_factory=Position)
    shipped_at: float | None = None  # when the last batch was confirmed
    error: str | None = None
    error_at: float | None = None
    note: str | None = None  # something shipping could not help (records pruned unshipped)

    def moved(self, at: Position, now: float) -> Cursor:
        return replace(self, at=at, shipped_at=now, error=None, error_at=None)

    def failed(self, error: str, now: float) -> Cursor:
        return replace(self, error=error, error_at=now)


def _position(data: Any) -> Position:
    if not isinstance(data, dict):
        return Position()
    seq, inode, offset, ts = (data.get(k) for k in ("seq", "inode", "offset", "ts"))
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (seq, inode, offset)
    ):
        return Position()
    return Position(seq, inode, offset, ts if isinstance(ts, str) else "")  # type: ignore[arg-type]


def load_cursor(path: Path, url: str) -> Cursor:
    """The cursor of a destination; a new one (nothing delivered) when there is none or it
    was kept for another URL (a new destination has received nothing)."""
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return Cursor(url)
    if not isinstance(data, dict) or data.get("url") != url:
        return Cursor(url)
    error, note = data.get("error"), data.get("note")
    shipped, error_at = data.get("shipped_at"), data.get("error_at")
    return Cursor(
        url,
        _position(data.get("at")),
        shipped if isinstance(shipped, int | float) else None,
        error if isinstance(error, str) else None,
        error_at if isinstance(error_at, int | float) else None,
        note if isinstance(note, str) else None,
    )


def save_cursor(path: Path, cursor: Cursor, *, durable: bool = True) -> None:
    """Replace the cursor file whole; `durable`: on the disk before this returns (a moved
    cursor must be, or a crash would send its batch again)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(asdict(cursor)))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
        os.close(dir_fd)
