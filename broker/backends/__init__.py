"""Where values live: one small interface, three stores behind it.

Every backend is synchronous: the CLI calls it directly, the broker from a worker thread
(keychain and HTTP calls block), and keeps what it read in memory (broker/cache.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from blindkey.config.errors import BlindkeyError
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.config.stores import OpenBaoSettings


class BackendError(BlindkeyError):
    """The store refused or failed; the message is one line that says what to do."""


class BackendUnavailable(BackendError):
    """The store cannot answer now (locked, sealed, unreachable); cached values still serve."""


class SecretBackend(Protocol):
    kind: str

    def describe(self) -> str:
        """Where the values are, for messages: never a credential."""
        ...

    def watched(self) -> tuple[Path, ...]:
        """Local files whose change means values may have changed."""
        ...

    def changed(self) -> set[tuple[str, str]] | None:
        """(env, name) pairs changed since the last call, after a watched file changed;
        None when the backend cannot tell, so everything must be read again."""
        ...

    def names(self, env: str) -> set[str]: ...

    def get(self, env: str, name: str) -> str | None: ...

    def values(self, env: str) -> dict[str, str]: ...

    def set(self, env: str, name: str, value: str) -> None: ...

    def set_many(self, env: str, values: dict[str, str]) -> None:
        """Store several values in one change where the store can (`secrets import`)."""
        ...

    def delete(self, env: str, name: str) -> bool: ...

    def close(self) -> None: ...


def set_one_by_one(backend: SecretBackend, env: str, values: dict[str, str]) -> None:
    """`set_many` for stores that take one value a call."""
    for name, value in values.items():
        backend.set(env, name, value)


def values_one_by_one(backend: SecretBackend, env: str) -> dict[str, str]:
    """`values` for stores that can only be read a name at a time."""
    found = {}
    for name in sorted(backend.names(env)):
        value = backend.get(env, name)
        if value is not None:
            found[name] = value
    return found


def open_backend(paths: Paths, settings: Settings) -> SecretBackend:
    """The configured store; opening one never falls back to another."""
    kind = settings.storage.kind
    if kind == "keyring":
        from blindkey.broker.backends.keychain import KeychainBackend

        return KeychainBackend(paths)
    if kind == "openbao":
        assert settings.storage.openbao is not None  # the settings parser requires it
        return open_openbao(settings.storage.openbao)
    from blindkey.broker.backends.file import FileBackend

    return FileBackend(paths)


def open_openbao(settings: OpenBaoSettings) -> SecretBackend:
    from blindkey.broker.backends.openbao import OpenBaoBackend

    return OpenBaoBackend(settings)
