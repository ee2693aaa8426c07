"""The OS keychain through `keyring`, service `blindkey`, account `<env>/<NAME>`.

The keyring backend is pinned per platform: `keyring.get_keyring()` could pick a chained,
null or plaintext backend (PYTHON_KEYRING_BACKEND, keyrings.alt), and a value must never
land in one of those silently. Keychains cannot list their items portably, so the names
live in an index next to the vault (names and change stamps only, never values); the
broker watches it, which is how a rotation reaches a running broker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from blindkey.broker.backends import (
    BackendError,
    BackendUnavailable,
    set_one_by_one,
    values_one_by_one,
)
from blindkey.config.atomic import locked, write_atomic
from blindkey.config.paths import Paths

SERVICE = "blindkey"
T = TypeVar("T")
# env -> name -> stamp, a random token replaced on every write of that name
Index = dict[str, dict[str, str]]

UNLOCK_HINT = (
    "unlock it (log in to the desktop session, or `gnome-keyring-daemon --unlock` "
    "on a headless machine) and retry"
)


def pinned_keyring() -> Any:
    """The platform's own keychain backend, checked usable; never a fallback."""
    factory: Any
    try:
        if sys.platform == "darwin":
            from keyring.backends import macOS

            factory = macOS.Keyring
        elif sys.platform == "win32":
            from keyring.backends import Windows

            factory = Windows.WinVaultKeyring
        else:
            factory = _secret_service()
        backend = factory()
        # `priority` raises when the keychain cannot be reached.
        _ = backend.priority
    except Exception as exc:  # the backends raise RuntimeError, ImportError or their own
        raise BackendUnavailable(no_keychain(exc)) from exc
    return backend


def _secret_service() -> Any:
    """keyring's Secret Service backend, closing its D-Bus connection when unlocking fails
    (keyring leaves it open, one socket per failed call)."""
    import secretstorage
    from keyring.backends import SecretService
    from keyring.errors import KeyringLocked

    class ClosingSecretService(SecretService.Keyring):
        def get_preferred_collection(self) -> Any:
            bus = secretstorage.dbus_init()
            try:
                collection = secretstorage.get_default_collection(bus)
                if collection.is_locked():
                    collection.unlock()  # may show the desktop's unlock prompt
                    if collection.is_locked():
                        raise KeyringLocked("Failed to unlock the collection!")
            except BaseException:
                bus.close()
                raise
            return collection

    return ClosingSecretService


def no_keychain(exc: BaseException) -> str:
    where = (
        "the Secret Service (gnome-keyring, KWallet) over D-Bus"
        if sys.platform.startswith("linux")
        else "the OS keychain"
    )
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if sys.platform.startswith("linux") and not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
        detail = "DBUS_SESSION_BUS_ADDRESS is not set"
    return (
        f"no OS keychain: {where} is not reachable ({detail}); start blindkey inside your "
        'desktop session (DBUS_SESSION_BUS_ADDRESS), or use [backend] kind = "file"'
    )


def _translate(action: str, exc: BaseException) -> BackendError:
    from keyring.errors import InitError, KeyringLocked, NoKeyringError

    if isinstance(exc, KeyringLocked):
        return BackendUnavailable(
            f"the OS keychain is locked and was not unlocked (the prompt was dismissed or "
            f"could not be shown) while trying to {action}; {UNLOCK_HINT}"
        )
    if isinstance(exc, NoKeyringError | InitError | RuntimeError):
        return BackendUnavailable(no_keychain(exc))
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return BackendUnavailable(f"the OS keychain failed to {action}: {detail}")


class KeychainBackend:
    kind = "keyring"

    def __init__(self, paths: Paths) -> None:
        self.index_path = paths.state_dir / "keyring-index.json"
        self.lock_path = paths.lock_file
        self._keyring: Any = None
        self._seen: Index | None = None

    def describe(self) -> str:
        return f"the OS keychain (service {SERVICE!r})"

    def _call(self, action: str, call: Callable[[Any], T]) -> T:
        from keyring.errors import KeyringError

        if self._keyring is None:
            self._keyring = pinned_keyring()
        try:
            return call(self._keyring)
        except (KeyringError, RuntimeError) as exc:
            raise _translate(action, exc) from exc
        except Exception as exc:
            # secretstorage and jeepney raise their own types (D-Bus gone mid-call).
            if type(exc).__module__.split(".")[0] in ("secretstorage", "jeepney"):
                raise _translate(action, exc) from exc
            raise

    # --- the index ---------------------------------------------------------------------

    def load_index(self) -> Index:
        try:
            raw = orjson.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError as exc:
            raise BackendError(
                f"{self.index_path}: corrupt keychain index: {exc}; the values are still in "
                "the keychain: set each name again with `blindkey secrets set`"
            ) from exc
        if not isinstance(raw, dict):
            raise BackendError(f"{self.index_path}: unexpected content")
        return raw

    @contextlib.contextmanager
    def _editing(self) -> Iterator[Index]:
        with locked(self.lock_path):
            index = self.load_index()
            yield index
            cleaned = {env: names for env, names in index.items() if names}
            write_atomic(self.index_path, orjson.dumps(cleaned, option=orjson.OPT_SORT_KEYS))

    def watched(self) -> tuple[Path, ...]:
        return (self.index_path,)

    def changed(self) -> set[tuple[str, str]] | None:
        index = self.load_index()
        previous, self._seen = self._seen, index
        if previous is None:
            return None
        keys = {(e, n) for e, names in index.items() for n in names}
        keys |= {(e, n) for e, names in previous.items() for n in names}
        return {(e, n) for e, n in keys if index.get(e, {}).get(n) != previous.get(e, {}).get(n)}

    # --- values ------------------------------------------------------------------------

    def names(self, env: str) -> set[str]:
        return set(self.load_index().get(env, {}))

    def get(self, env: str, name: str) -> str | None:
        if name not in self.load_index().get(env, {}):
            return None
        value: str | None = self._call(
            f"read {name}", lambda k: k.get_password(SERVICE, f"{env}/{name}")
        )
        return value

    def values(self, env: str) -> dict[str, str]:
        return values_one_by_one(self, env)

    def set(self, env: str, name: str, value: str) -> None:
        with self._editing() as index:
            self._call(f"store {name}", lambda k: k.set_password(SERVICE, f"{env}/{name}", value))
            index.setdefault(env, {})[name] = secrets.token_hex(8)

    def set_many(self, env: str, values: dict[str, str]) -> None:
        set_one_by_one(self, env, values)

    def delete(self, env: str, name: str) -> bool:
        from keyring.errors import PasswordDeleteError

        def remove(keyring: Any) -> bool:
            try:
                keyring.delete_password(SERVICE, f"{env}/{name}")
            except PasswordDeleteError:
                return False
            return True

        with self._editing() as index:
            known = index.get(env, {}).pop(name, None) is not None
            removed = self._call(f"delete {name}", remove)
        return known or removed

    def close(self) -> None:
        self._keyring = None
