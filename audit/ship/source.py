"""The records a destination has not received yet, read from the audit files in order.

A batch starts just past the cursor's record and runs through rotated files into the
current one; only whole lines are read (a line being written is not one yet), and lines
that are not chained records (a fragment a crash left) are passed over. With `sync`, the
current file is fsync'd before its records are handed out: a copy never holds a record the
machine could still lose (its seq would then be given to another record).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.ship.cursor import Position
from blindkey.audit.store import (
    AUDIT_FILE,
    ROTATED_PREFIX,
    head_of_file,
    rotated_files,
)

BLOCK = 1 << 20
TAIL = 1 << 17  # read back from a cursor's offset to find the record that ends there


class Record:
    """A record as read: its line as written (without its newline), its values, and where
    it ends (a plain class: one is made per record shipped, the cheaper the better)."""

    __slots__ = ("inode", "line", "offset", "seq", "values")

    def __init__(self, line: bytes, values: dict[str, Any], seq: int) -> None:
        self.line, self.values, self.seq = line, values, seq
        self.inode = self.offset = 0

    @property
    def end(self) -> Position:
        """Just past it: a cursor after it."""
        return Position(self.seq, self.inode, self.offset, self.values["ts"])


@dataclass
class Batch:
    records: list[Record] = field(default_factory=list)
    end: Position = field(default_factory=Position)  # where the next batch starts
    note: str | None = None  # records that cannot be shipped any more, and why


def parse(line: bytes) -> Record | None:
    try:
        values = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(values, dict):
        return None
    seq = values.get("seq")
    if type(seq) is not int or type(values.get("ts")) is not str:  # bool is not int here
        return None
    return Record(line, values, seq)


def _listing(audit_dir: Path) -> list[tuple[Path, os.stat_result]]:
    """Every audit file with its stat, oldest first; listed again if a rotation came
    between the look at the rotated files and the one at the current file."""
    while True:
        before = rotated_files(audit_dir)
        found = []
        for path in [*before, audit_dir / AUDIT_FILE]:
            try:
                found.append((path, path.stat()))
            except FileNotFoundError:
                continue
        if rotated_files(audit_dir) == before:
            return found


def _last_seq_of(path: Path) -> int | None:
    """A rotated file's last seq, from its name (audit-<seq>.jsonl)."""
    stem = path.name.removeprefix(ROTATED_PREFIX).removesuffix(".jsonl")
    return int(stem) if path.name.startswith(ROTATED_PREFIX) and stem.isdigit() else None


def _ends_at(path: Path, position: Position) -> bool:
    """Whether the record just before `position.offset` in `path` is `position.seq`."""
    with path.open("rb") as handle:
        start = max(0, position.offset - TAIL)
        handle.seek(start)
        data = handle.read(position.offset - start)
    if not data.endswith(b"\n"):
        return False
    record = parse(data[:-1].rsplit(b"\n", 1)[-1])
    return record is not None and record.seq == position.seq


class Source:
    def __init__(self, audit_dir: Path, *, sync: bool = True) -> None:
        self.dir = audit_dir
        self.sync = sync
        self.trusted: Position | None = None  # the last end this source gave: no check

    def read(self, after: Position, max_records: int, max_bytes: int) -> Batch:
        files = _listing(self.dir)
        if not files:
            return Batch(end=after)
        found = self._locate(files, after)
        if isinstance(found, Batch):
            return found
        index, offset, base, note = found
        batch = self._read_from(files, index, offset, base, max_records, max_bytes)
        batch.note = note
        self.trusted = batch.end
        return batch

    def _locate(
        self, files: list[tuple[Path, os.stat_result]], after: Position
    ) -> tuple[int, int, Position, str | None] | Batch:
        """Where the record after `after` starts: (file index, offset, the position it
        follows, a note), or the empty batch when there is none yet."""
        if after.seq == 0:
            return 0, 0, Position(), None
        for index, (path, info) in enumerate(files):
            here = info.st_ino == after.inode and after.offset <= info.st_size
            if here and (after == self.trusted or _ends_at(path, after)):
                return index, after.offset, after, None
        return self._find(files, after)

    def _find(
        self, files: list[tuple[Path, os.stat_result]], after: Position
    ) -> tuple[int, int, Position, str | None] | Batch:
        """The record after `after.seq`, looked for by seq (its file was rotated into one
        not known by inode, pruned, or the cursor was written by another build)."""
        for index, (path, info) in enumerate(files):
            last = _last_seq_of(path)
            if last is not None and last <= after.seq:
                continue
            offset, end = 0, None
            with path.open("rb") as handle:
                for line in handle:
                    record = parse(line.rstrip(b"\n")) if line.endswith(b"\n") else None
                    if record is not None and record.seq > after.seq:
                        note = None
                        if record.seq > after.seq + 1:
                            note = f"records {after.seq + 1}-{record.seq - 1} were deleted "
                            note += "(keep_days) before they were shipped"
                        return index, offset, Position(record.seq - 1), note
                    if record is not None and record.seq == after.seq:
                        end = Position(
                            record.seq, info.st_ino, offset + len(line), record.values["ts"]
                        )
                    offset += len(line) if line.endswith(b"\n") else 0
            if end is not None:
                self.trusted = end
                return Batch(end=end)  # caught up: the record after it is not written yet
        head = max((h.seq for p, _ in files if (h := head_of_file(p)) is not None), default=0)
        if head < after.seq:
            note = "the audit starts again at seq 1 (its files were replaced after seq "
            note += f"{after.seq}): shipping the new chain from its start"
            return 0, 0, Position(), note
        return Batch(end=after)

    def _read_from(
        self,
        files: list[tuple[Path, os.stat_result]],
        index: int,
        offset: int,
        base: Position,
        max_records: int,
        max_bytes: int,
    ) -> Batch:
        batch = Batch(end=base)
        size = 0
        while len(batch.records) < max_records and size < max_bytes:
            path, info = files[index]
            current = index == len(files) - 1
            taken, offset, done = self._read_file(
                path, info, offset, batch, max_records, max_bytes - size
            )
            size += taken
            if not done or current:
                break
            index, offset = index + 1, 0  # a rotated file read to its end: the next one
            batch.end = Position(batch.end.seq, files[index][1].st_ino, 0, batch.end.ts)
        return batch

    def _read_file(
        self,
        path: Path,
        info: os.stat_result,
        offset: int,
        batch: Batch,
        max_records: int,
        max_bytes: int,
    ) -> tuple[int, int, bool]:
        """Whole lines of `path` from `offset` into `batch`: (bytes taken, the offset
        reached, whether the file has no whole line left)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0, offset, True
        try:
            if os.fstat(fd).st_ino != info.st_ino:
                return 0, offset, False  # replaced since the listing: the next read sees it
            want = max(max_bytes, BLOCK)
            data = os.pread(fd, want, offset)
            while b"\n" not in data and len(data) >= want:  # one very long line
                more = os.pread(fd, BLOCK, offset + len(data))
                data, want = data + more, want + BLOCK
            whole = data[: data.rfind(b"\n") + 1]
            taken = 0
            records, last = batch.records, batch.end.seq
            inode = info.st_ino
            for line in whole.splitlines(keepends=True):
                if len(records) >= max_records:
                    break
                taken += len(line)
                record = parse(line[:-1])
                if record is not None and record.seq > last:
                    record.inode, record.offset = inode, offset + taken
                    records.append(record)
                    last = record.seq
            if taken:  # past lines that are not records too: they are not looked at again
                ts = records[-1].values["ts"] if records else batch.end.ts
                batch.end = Position(last, inode, offset + taken, ts)
            if batch.records and self.sync and path.name == AUDIT_FILE:
                os.fsync(fd)  # what is shipped is on the disk first
            done = taken == len(whole) and len(data) < want  # read to the end of the file
            return taken, offset + taken, done
        finally:
            os.close(fd)
