"""The broker's approvals file: approvers (seeds, recovery hashes, lockout), grants, tier
floors and elevated windows, one AES-256-GCM file sealed with the vault key.

Only the broker's user can read or write it (0600 in the broker's state directory): the
agent's user, in the hardened deployment, can neither read a seed nor write a grant.

Beside it, a sealed marker (`approvals.mark`) keeps what the broker must know when the
file itself cannot be read: how many approvers were active and the tier floors. A file
that no longer decrypts, or is gone once approvers existed, is then refused rather than
read as empty: an empty file has no floors, so a tier lowered by hand in config.toml
would release a restricted secret without a grant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from blindkey.broker.approvals.model import (
    ApprovalsState,
    Malformed,
    Mark,
    decode_mark,
    decode_state,
    encode_mark,
    encode_state,
    mark_of,
)
from blindkey.broker.vault import VaultError, read_sealed, write_sealed
from blindkey.config.atomic import locked
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

_MAGIC = b"BKA1"
_MARK_MAGIC = b"BKM1"
_NO_MARK = Mark(0, {})


class ApprovalsUnreadable(BlindkeyError):
    """The approvals file cannot be trusted: it does not decrypt, or it is gone although
    approvers were enrolled. Nothing it guards is released until it is fixed."""


def approvals_file(paths: Paths) -> Path:
    return paths.state_dir / "approvals.bin"


def mark_file(paths: Paths) -> Path:
    return paths.state_dir / "approvals.mark"


@dataclass
class ApprovalsFile:
    path: Path
    key_path: Path
    lock_path: Path
    mark_path: Path
    _mark: Mark | None = field(default=None, repr=False)

    @classmethod
    def of(cls, paths: Paths) -> ApprovalsFile:
        return cls(
            approvals_file(paths),
            paths.vault_key,
            paths.state_dir / "approvals.lock",
            mark_file(paths),
        )

    def stamp(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def mark(self) -> Mark | None:
        """The marker as last written; None when it is missing or unreadable."""
        try:
            data = read_sealed(self.mark_path, self.key_path, _MARK_MAGIC, "approvals marker")
        except (BlindkeyError, OSError, ValueError):
            return None
        if data is None:
            return None
        try:
            return decode_mark(data)
        except Malformed:
            return None

    def read_stored(self) -> dict[str, Any] | None:
        """The file's stored form (None: no file), as `load` decodes it."""
        return read_sealed(self.path, self.key_path, _MAGIC, "approvals file")

    def write_stored(self, data: dict[str, Any]) -> None:
        write_sealed(self.path, self.key_path, _MAGIC, data)

    def load(self) -> ApprovalsState:
        try:
            data = self.read_stored()
        except (VaultError, orjson.JSONDecodeError) as exc:
            if isinstance(exc.__cause__, PermissionError):
                # Not damaged: read by a user it is not for (the broker's user owns it).
                raise ApprovalsUnreadable(
                    f"{exc}: approvals are the broker's user's to read (run the command as "
                    "that user); nothing it guards is released meanwhile"
                ) from exc
            raise ApprovalsUnreadable(f"{self.path} cannot be read ({exc}). {self.advice}") from exc
        if data is None:
            mark = self.mark()
            if mark is not None and mark.approvers:
                raise ApprovalsUnreadable(
                    f"{self.path} is missing, but {mark.approvers} approver(s) were "
                    f"enrolled ({self.mark_path} says so). {self.advice}"
                )
        try:
            state = decode_state(data or {})
        except Malformed as exc:
            raise ApprovalsUnreadable(
                f"{self.path} cannot be read (it decrypts, but {exc}). {self.advice}"
            ) from exc
        self._keep_mark(state)
        return state

    @property
    def advice(self) -> str:
        return (
            "Until it is fixed no controlled or restricted secret is released. Restore it "
            f"from a backup; or, to start over without approvers, grants and tier floors, "
            f"remove both {self.path.name} and {self.mark_path.name} and enrol again "
            "(`blindkey totp enroll`)"
        )

    def _keep_mark(self, state: ApprovalsState) -> None:
        mark = mark_of(state)
        if self._mark is None:
            # No marker (a fresh install, or one from before markers) is an empty one.
            self._mark = self.mark() or _NO_MARK
        if mark != self._mark:
            write_sealed(self.mark_path, self.key_path, _MARK_MAGIC, encode_mark(mark))
            self._mark = mark

    def store(self, state: ApprovalsState) -> None:
        self.write_stored(encode_state(state))
        self._keep_mark(state)

    @contextlib.contextmanager
    def editing(self) -> Iterator[ApprovalsState]:
        """The state under the lock; saved when the block ends without an exception."""
        with locked(self.lock_path):
            state = self.load()
            before = encode_state(state)
            yield state
            if encode_state(state) != before:
                self.store(state)


def approvals_health(paths: Paths) -> dict[str, Any]:
    """For `doctor` and `proxy status` without a broker: whether the approvals file can be
    read, and if not, why and what to do. `approvers`: active approvers (from the marker
    when the file cannot be read; None when neither can)."""
    store = ApprovalsFile.of(paths)
    try:
        state = store.load()
    except ApprovalsUnreadable as exc:
        mark = store.mark()
        return {
            "ok": False,
            "file": str(store.path),
            "error": str(exc),
            "approvers": None if mark is None else mark.approvers,
        }
    return {
        "ok": True,
        "file": str(store.path),
        "error": None,
        "approvers": mark_of(state).approvers,
    }
