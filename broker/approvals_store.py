"""The broker's approvals file: approvers (seeds, recovery hashes, lockout), grants, tier
floors and elevated windows, one AES-256-GCM file sealed with the vault key.

Only the broker's user can read or write it (0600 in the broker's state directory): the
agent's user, in the hardened deployment, can neither read a seed nor write a grant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from blindkey.broker.vault import read_sealed, write_sealed
from blindkey.config.atomic import locked
from blindkey.config.paths import Paths

_MAGIC = b"BKA1"
State = dict[str, Any]


def approvals_file(paths: Paths) -> Path:
    return paths.state_dir / "approvals.bin"


def empty_state() -> State:
    return {"approvers": {}, "grants": [], "floors": {}, "elevate": {}}


@dataclass
class ApprovalsFile:
    path: Path
    key_path: Path
    lock_path: Path

    @classmethod
    def of(cls, paths: Paths) -> ApprovalsFile:
        return cls(approvals_file(paths), paths.vault_key, paths.state_dir / "approvals.lock")

    def stamp(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> State:
        state = empty_state()
        state.update(read_sealed(self.path, self.key_path, _MAGIC, "approvals file") or {})
        return state

    def store(self, state: State) -> None:
        write_sealed(self.path, self.key_path, _MAGIC, state)

    @contextlib.contextmanager
    def editing(self) -> Iterator[State]:
        """The state under the lock; saved when the block ends without an exception."""
        with locked(self.lock_path):
            state = self.load()
            before = orjson.dumps(state)
            yield state
            if orjson.dumps(state) != before:
                self.store(state)
