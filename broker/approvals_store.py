"""The broker's approvals file: approvers (seeds, recovery hashes, lockout), grants, tier
floors and elevated windows, one AES-256-GCM file sealed with the vault key.

Only the broker's user can read or write it (0600 in the broker's state directory): the
agent's user, in the hardened deployment, can neither read a seed nor write a grant.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindkey.config.atomic import locked, write_atomic
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

_MAGIC = b"BKA1"
_NONCE = 12
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

    def _cipher(self) -> AESGCM:
        try:
            key = self.key_path.read_bytes()
        except FileNotFoundError as exc:
            raise BlindkeyError(f"{self.key_path}: key missing; run `blindkey init`") from exc
        except PermissionError as exc:
            raise BlindkeyError(
                f"{self.key_path}: permission denied; approvals belong to the broker's user"
            ) from exc
        if len(key) != 32:
            raise BlindkeyError(f"{self.key_path}: not a 256-bit key")
        return AESGCM(key)

    def stamp(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> State:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return empty_state()
        except PermissionError as exc:
            raise BlindkeyError(
                f"{self.path}: permission denied; approvals belong to the broker's user"
            ) from exc
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + _NONCE + 16:
            raise BlindkeyError(f"{self.path}: not a blindkey approvals file")
        nonce = blob[len(_MAGIC) : len(_MAGIC) + _NONCE]
        try:
            plain = self._cipher().decrypt(nonce, blob[len(_MAGIC) + _NONCE :], _MAGIC)
        except InvalidTag as exc:
            # Edited or swapped: refused whole, never half trusted.
            raise BlindkeyError(f"{self.path}: does not decrypt with {self.key_path}") from exc
        state = orjson.loads(plain)
        if not isinstance(state, dict):
            raise BlindkeyError(f"{self.path}: unexpected content")
        base = empty_state()
        base.update(state)
        return base

    def store(self, state: State) -> None:
        nonce = os.urandom(_NONCE)
        sealed = self._cipher().encrypt(nonce, orjson.dumps(state), _MAGIC)
        write_atomic(self.path, _MAGIC + nonce + sealed)

    @contextlib.contextmanager
    def editing(self) -> Iterator[State]:
        """The state under the lock; saved when the block ends without an exception."""
        with locked(self.lock_path):
            state = self.load()
            before = orjson.dumps(state)
            yield state
            if orjson.dumps(state) != before:
                self.store(state)
