"""The audit files and the one way to append to them, shared by every writer (the proxy,
the broker, CLI commands): under an flock on `audit.lock`, look at where the file stands,
continue the chain from its last record, write whole lines, rotate when it is big enough.

Files: `audit.jsonl` (current), `audit-<last seq>.jsonl` (rotated, oldest first by name),
`pruned.json` (the head of the last rotated file deleted after `keep_days`), `chain.key`.
A rotated file is left read-only (0400): a writer that still has it open sees that in its
fstat and moves to the new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from blindkey.audit.chain import KEY_FILE, Head, head_of, load_key, seal

if TYPE_CHECKING:
    from blindkey.audit.checkpoint import Signer

AUDIT_FILE = "audit.jsonl"
LOCK_FILE = "audit.lock"
PRUNED_FILE = "pruned.json"
ROTATED_PREFIX = "audit-"
TAIL_READ = 1 << 16


def audit_file(audit_dir: Path) -> Path:
    return audit_dir / AUDIT_FILE


def rotated_files(audit_dir: Path) -> list[Path]:
    """Rotated files, oldest first (the name holds the last seq, zero-padded)."""
    try:
        names = os.listdir(audit_dir)
    except FileNotFoundError:
        return []
    return sorted(
        audit_dir / n for n in names if n.startswith(ROTATED_PREFIX) and n.endswith(".jsonl")
    )


def audit_files(audit_dir: Path) -> list[Path]:
    """Every audit file, oldest first, the current one last."""
    return [*rotated_files(audit_dir), audit_file(audit_dir)]


def read_pruned(audit_dir: Path) -> Head | None:
    try:
        data = orjson.loads((audit_dir / PRUNED_FILE).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    seq, chain = data.get("seq"), data.get("chain")
    return Head(seq, chain) if isinstance(seq, int) and isinstance(chain, str) else None


def last_line(path: Path | int) -> tuple[bytes | None, bool]:
    """The last whole line of a file (by path or open descriptor), and whether the file
    ends with a newline (False: a fragment follows it, or the file is empty)."""
    fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None, False
        span = TAIL_READ
        while True:
            start = max(0, size - span)
            data = os.pread(fd, size - start, start)
            ends = data.endswith(b"\n")
            body = data if ends else data[: data.rfind(b"\n") + 1]
            cut = body[:-1].rfind(b"\n")
            if cut >= 0 or start == 0:
                line = body[cut + 1 :] if body else None
                return line or None, ends
            span *= 4  # a very long last line: read further back
    finally:
        if not isinstance(path, int):
            os.close(fd)


class ChainKeyMissing(OSError):
    """The key is gone while records are chained with it: writing stops (fail closed)."""

    def __init__(self, path: Path, seq: int) -> None:
        super().__init__(
            f"{path} is missing while {seq} records are chained with it: restore it from a "
            "backup, or move the audit files away to start a new chain"
        )
        self.strerror = str(self)


def head_of_file(path: Path) -> Head | None:
    try:
        line, _ = last_line(path)
    except FileNotFoundError:
        return None
    return head_of(line) if line else None


class AuditLog:
    """Appends chained records to the audit of one directory, from one process."""

    def __init__(
        self,
        audit_dir: Path,
        *,
        rotate_bytes: int = 64 << 20,
        keep_days: float = 90,
        hold: bool = False,
        checkpoint_every: int = 1000,
    ) -> None:
        self.dir = audit_dir
        # Keep the lock between appends until release(): a busy writer (the proxy) then
        # pays for the lock and the look at the file once per group, not once per record,
        # and others wait at most until its next release.
        self.hold = hold
        self._held = False
        self.path = audit_file(audit_dir)
        self.rotate_bytes = rotate_bytes
        self.keep_days = keep_days
        self.key = b""
        self.head = Head()
        # Signed checkpoints (audit/checkpoint.py): the signer is loaded when one is due.
        self.checkpoint_every = checkpoint_every
        self.signer: Signer | None = None
        self._signer_loaded = False
        self._checkpointed = 0  # seq of the last checkpoint this process wrote
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._end = -1  # where this process's view of the file ends; -1: read it first
        self._ends_clean = True
        # fsync may run in a thread while the event loop rotates (closes) the descriptor.
        self._fd_lock = threading.Lock()

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self.key = self.key or self._key()
            self._reopen()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _key(self) -> bytes:
        """The chain key, made on first use only: once records are chained, a missing key
        is a loss to report (a new one would leave every earlier record unverifiable)."""
        if not (self.dir / KEY_FILE).exists():
            head = head_of_file(self.path) or self._previous_head()
            if head.seq:
                raise ChainKeyMissing(self.dir / KEY_FILE, head.seq)
        return load_key(self.dir)

    def _reopen(self) -> None:
        # Read too: catching up reads the last record through this descriptor.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        with self._fd_lock:
            old, self._fd = self._fd, fd
            if old is not None:
                os.close(old)
        self._end = -1

    def append(self, records: Iterable[dict[str, Any]]) -> list[bytes]:
        """Seal and write `records` as one write; the lines written. Raises OSError, and
        then nothing of them is in the file (a partial write is cut off again)."""
        if self._fd is None or self._lock_fd is None:
            self.open()
        assert self._fd is not None
        self._lock()
        try:
            if not self._held:
                self._catch_up()
            self._held = self.hold
            head, lines = self.head, []
            records = list(records)
            for record in records:
                line, head = seal(self.key, record, head)
                lines.append(line)
            if self._checkpoint_due(self.head.seq, head.seq):
                line, head = self._checkpoint(head, "interval")
                lines.append(line)
            payload = b"".join(lines)
            if not self._ends_clean:
                payload = b"\n" + payload  # end a torn fragment so it swallows no record
            try:
                self._write_all(payload)
            except OSError:
                for record in records:
                    record.pop("seq", None)  # not written: numbered again when it is
                raise
            self._end += len(payload)
            self._ends_clean = True
            self.head = head
            if self.rotate_bytes and self._end >= self.rotate_bytes:
                self._rotate()
            return lines
        finally:
            self._unlock()

    def _checkpoint_due(self, before: int, after: int) -> bool:
        # checkpoint.due's test, without its import statement on every append (~2 us).
        every = self.checkpoint_every
        return every > 0 and before // every != after // every and self.signer_ready()

    def signer_ready(self) -> bool:
        from blindkey.audit.checkpoint import load_signer

        if not self._signer_loaded:
            self._signer_loaded = True
            try:
                self.signer = load_signer(self.dir)
            except (OSError, ValueError):
                self.signer = None  # no checkpoints from this writer; records still go
        return self.signer is not None

    def _checkpoint(self, head: Head, cause: str) -> tuple[bytes, Head]:
        assert self.signer is not None
        record = self.signer.record(head.seq, head.hash, head.chain, cause)
        line, head = seal(self.key, record, head)
        self._checkpointed = head.seq
        return line, head

    def _checkpoint_at_rotation(self) -> None:
        """The rotated file ends with a signed head, unless it ends with one already."""
        if self.head.seq == self._checkpointed or self.checkpoint_every <= 0:
            return
        if not self.signer_ready():
            return
        line, head = self._checkpoint(self.head, "rotation")
        try:
            self._write_all(line)
        except OSError:
            return  # the next interval's checkpoint covers these records
        self._end += len(line)
        self.head = head

    def _lock(self) -> None:
        assert self._lock_fd is not None
        if not self._held:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        if not self._held and self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def release(self) -> None:
        """Let other writers in (a holding writer calls this every group)."""
        if self._held:
            self._held = False
            self._unlock()

    def _write_all(self, payload: bytes) -> None:
        assert self._fd is not None
        view = memoryview(payload)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            if len(view) < len(payload):
                # Half a line must not stay: the chain would break at it.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._end)
            raise

    def _catch_up(self) -> None:
        """Make this view current: another writer may have appended or rotated."""
        assert self._fd is not None
        info = os.fstat(self._fd)
        if info.st_nlink == 0 or not info.st_mode & stat.S_IWUSR:
            self._reopen()  # rotated (left 0400) or removed: the current file is another
            info = os.fstat(self._fd)
        if info.st_size == self._end:
            return
        line, self._ends_clean = last_line(self._fd)
        self._end = info.st_size
        if info.st_size == 0:
            self._ends_clean = True
        head = head_of(line) if line else None
        self.head = head or self._previous_head()

    def _previous_head(self) -> Head:
        """The chain's head when the current file holds no chained record yet."""
        for path in reversed(rotated_files(self.dir)):
            head = head_of_file(path)
            if head is not None:
                return head
        return read_pruned(self.dir) or Head()

    def _rotate(self) -> None:
        assert self._fd is not None
        self._checkpoint_at_rotation()
        with self._fd_lock:
            os.fsync(self._fd)
            os.fchmod(self._fd, 0o400)
        os.rename(self.path, self.dir / f"{ROTATED_PREFIX}{self.head.seq:012d}.jsonl")
        self._reopen()
        self._end, self._ends_clean = 0, True
        self._prune()
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _prune(self) -> None:
        """Delete rotated files older than keep_days, oldest first, noting where the chain
        of what is left starts."""
        if self.keep_days <= 0:
            return
        limit = time.time() - self.keep_days * 86400
        for path in rotated_files(self.dir):
            try:
                if path.stat().st_mtime >= limit:
                    return
            except FileNotFoundError:
                continue
            head = head_of_file(path)
            if head is not None:
                marker = self.dir / (PRUNED_FILE + ".tmp")
                marker.write_bytes(orjson.dumps({"seq": head.seq, "chain": head.chain}))
                os.chmod(marker, 0o600)
                os.replace(marker, self.dir / PRUNED_FILE)
            path.unlink()

    def refresh(self) -> Head:
        """The chain's head as the file has it now (every writer's records counted)."""
        if self._fd is None or self._lock_fd is None:
            self.open()
        self._lock()
        try:
            if not self._held:
                self._catch_up()
            return self.head
        finally:
            self._unlock()

    def sync(self) -> None:
        with self._fd_lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def close(self) -> None:
        self.release()
        with self._fd_lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None
