"""The embedded default backend: an AES-256-GCM encrypted file, replaced atomically."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindkey.config.atomic import locked, write_atomic
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

_MAGIC = b"BKV1"
_NONCE = 12
# env -> name -> value
VaultData = dict[str, dict[str, str]]


class VaultError(BlindkeyError):
    """The vault or its key is missing, unreadable or does not decrypt."""


def ensure_key(paths: Paths) -> None:
    """Make the 256-bit vault key (0600) once; never overwrite an existing one."""
    if paths.vault_file.exists() and not paths.vault_key.exists():
        # A new key could never decrypt the vault that is there: the old one must come back.
        raise VaultError(
            f"{paths.vault_key}: vault key missing but {paths.vault_file} exists; "
            "restore the key from your backup (a new key cannot decrypt it)"
        )
    if paths.vault_key.exists():
        return
    # Written whole under a temporary name, then linked into place: a crash can leave a
    # stray temporary file, never an empty key that would be kept forever.
    tmp = paths.vault_key.with_name(f".{paths.vault_key.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(AESGCM.generate_key(bit_length=256))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, paths.vault_key)
    finally:
        tmp.unlink()


def _cipher(key_path: Path) -> AESGCM:
    try:
        key = key_path.read_bytes()
    except FileNotFoundError as exc:
        raise VaultError(
            f"{key_path}: vault key missing; restore the key from your backup if a vault was "
            "written with it (a new key cannot decrypt it), else run `blindkey init`"
        ) from exc
    except PermissionError as exc:
        raise VaultError(
            f"{key_path}: permission denied reading the vault key (it belongs to the broker's user)"
        ) from exc
    if len(key) != 32:
        raise VaultError(f"{key_path}: not a 256-bit key")
    return AESGCM(key)


def read_sealed(path: Path, key_path: Path, magic: bytes, what: str) -> dict[str, Any] | None:
    """The JSON object sealed in `path` under the vault key, None when there is no file.

    An edited or swapped file does not decrypt and is refused whole, never half trusted.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise VaultError(f"{path}: permission denied reading the {what}") from exc
    if not blob.startswith(magic) or len(blob) < len(magic) + _NONCE + 16:
        raise VaultError(f"{path}: not a blindkey {what}")
    nonce = blob[len(magic) : len(magic) + _NONCE]
    try:
        plain = _cipher(key_path).decrypt(nonce, blob[len(magic) + _NONCE :], magic)
    except InvalidTag as exc:
        raise VaultError(f"{path}: does not decrypt with {key_path}") from exc
    data = orjson.loads(plain)
    if not isinstance(data, dict):
        raise VaultError(f"{path}: unexpected content")
    return data


def write_sealed(path: Path, key_path: Path, magic: bytes, data: Mapping[str, Any]) -> None:
    """Seal `data` under the vault key (AES-256-GCM, a fresh nonce) and replace `path`."""
    nonce = os.urandom(_NONCE)
    sealed = _cipher(key_path).encrypt(nonce, orjson.dumps(data), magic)
    write_atomic(path, magic + nonce + sealed)


class FileVault:
    def __init__(self, paths: Paths) -> None:
        self.path = paths.vault_file
        self.key_path = paths.vault_key
        self.lock_path = paths.lock_file

    def load(self) -> VaultData:
        data = read_sealed(self.path, self.key_path, _MAGIC, "vault")
        return {} if data is None else data

    def update(self, change: Callable[[VaultData], None]) -> VaultData:
        with locked(self.lock_path):
            data = self.load()
            change(data)
            kept = {env: values for env, values in data.items() if values}
            write_sealed(self.path, self.key_path, _MAGIC, kept)
            return data

    def set(self, env: str, name: str, value: str) -> None:
        self.update(lambda data: data.setdefault(env, {}).__setitem__(name, value))

    def delete(self, env: str, name: str) -> bool:
        found = False

        def change(data: VaultData) -> None:
            nonlocal found
            found = data.get(env, {}).pop(name, None) is not None

        self.update(change)
        return found
