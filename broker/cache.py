"""The values a broker serves from memory: the whole file vault, or what a keychain or
OpenBao answered, each held for `cache_ttl`.

Lookups never block: a name the view cannot answer is MISSING, and the broker fetches it
on a worker thread (`fetch`), then files the answer on the event loop (`store`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from blindkey.broker.backends import SecretBackend
from blindkey.broker.backends.file import FileBackend
from blindkey.broker.vault import VaultData


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
Lookup = str | None | _Missing
Fetched = dict[str, str | None]


class ValueView(Protocol):
    # False: every value is in memory, a name not there does not exist.
    remote: bool

    @property
    def backend(self) -> SecretBackend: ...

    def lookup(self, env: str, name: str) -> Lookup: ...

    def snapshot(self, env: str) -> dict[str, str]: ...

    def reload(self) -> bool:
        """A watched file changed: True when what is served changed."""
        ...

    def forget(self, keys: Iterable[tuple[str, str]]) -> bool: ...

    def expire(self) -> bool: ...

    def fetch(self, env: str, names: Iterable[str] | None) -> Fetched:
        """Blocking, on a worker thread: these names, or (None) the whole environment."""
        ...

    def store(self, env: str, fetched: Fetched, *, whole_env: bool) -> bool: ...


class FileView:
    """The decrypted vault, read whole whenever its file changes."""

    remote = False

    def __init__(self, backend: FileBackend) -> None:
        self.backend = backend
        self.data: VaultData = {}

    def lookup(self, env: str, name: str) -> Lookup:
        return self.data.get(env, {}).get(name)

    def snapshot(self, env: str) -> dict[str, str]:
        return dict(self.data.get(env, {}))

    def reload(self) -> bool:
        data = self.backend.load()
        changed = data != self.data
        self.data = data
        return changed

    def forget(self, keys: Iterable[tuple[str, str]]) -> bool:
        return False

    def expire(self) -> bool:
        return False

    def fetch(self, env: str, names: Iterable[str] | None) -> Fetched:
        return {}

    def store(self, env: str, fetched: Fetched, *, whole_env: bool) -> bool:
        return False


@dataclass(frozen=True)
class _Entry:
    value: str | None  # None: known not to exist
    expires: float


class CachedView:
    """Values read from a slow store, each served until `ttl` after it was read."""

    remote = True

    def __init__(
        self, backend: SecretBackend, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.backend = backend
        self.ttl = ttl
        self.clock = clock
        self.entries: dict[tuple[str, str], _Entry] = {}
        # env -> (every name the store held, until when that listing is trusted)
        self.listed: dict[str, tuple[frozenset[str], float]] = {}

    def lookup(self, env: str, name: str) -> Lookup:
        entry = self.entries.get((env, name))
        now = self.clock()
        if entry is not None and entry.expires > now:
            return entry.value
        listing = self.listed.get(env)
        if listing is not None and listing[1] > now and name not in listing[0]:
            return None
        return MISSING

    def snapshot(self, env: str) -> dict[str, str]:
        now = self.clock()
        return {
            name: entry.value
            for (e, name), entry in self.entries.items()
            if e == env and entry.value is not None and entry.expires > now
        }

    def reload(self) -> bool:
        changed = self.backend.changed()
        if changed is None:
            had = bool(self.entries)
            self.entries.clear()
            self.listed.clear()
            return had
        return self.forget(changed)

    def forget(self, keys: Iterable[tuple[str, str]]) -> bool:
        removed = False
        for env, name in keys:
            self.listed.pop(env, None)
            entry = self.entries.pop((env, name), None)
            removed = removed or (entry is not None and entry.value is not None)
        return removed

    def expire(self) -> bool:
        now = self.clock()
        stale = [key for key, entry in self.entries.items() if entry.expires <= now]
        removed = False
        for key in stale:
            removed = removed or self.entries.pop(key).value is not None
        for env in [env for env, (_, until) in self.listed.items() if until <= now]:
            del self.listed[env]
        return removed

    def fetch(self, env: str, names: Iterable[str] | None) -> Fetched:
        if names is None:
            return dict(self.backend.values(env))
        return {name: self.backend.get(env, name) for name in names}

    def store(self, env: str, fetched: Fetched, *, whole_env: bool) -> bool:
        now = self.clock()
        expires = now + self.ttl
        changed = False
        if whole_env:
            present = frozenset(n for n, v in fetched.items() if v is not None)
            self.listed[env] = (present, expires)
            for (e, name), entry in list(self.entries.items()):
                if e == env and name not in present:
                    del self.entries[(e, name)]
                    changed = changed or entry.value is not None
        for name, value in fetched.items():
            old = self.entries.get((env, name))
            served = old.value if old is not None and old.expires > now else None
            self.entries[(env, name)] = _Entry(value, expires)
            changed = changed or served != value
        return changed


def view_for(backend: SecretBackend, ttl: float) -> ValueView:
    if isinstance(backend, FileBackend):
        return FileView(backend)
    return CachedView(backend, ttl)
