"""The default store: the encrypted vault file (broker/vault.py), read whole."""

from __future__ import annotations

from pathlib import Path

from blindkey.broker.vault import FileVault, VaultData
from blindkey.config.paths import Paths


class FileBackend:
    kind = "file"

    def __init__(self, paths: Paths) -> None:
        self.vault = FileVault(paths)

    def describe(self) -> str:
        return f"the file vault {self.vault.path}"

    def watched(self) -> tuple[Path, ...]:
        return (self.vault.path, self.vault.key_path)

    def changed(self) -> set[tuple[str, str]] | None:
        return None

    def load(self) -> VaultData:
        return self.vault.load()

    def names(self, env: str) -> set[str]:
        return set(self.vault.load().get(env, {}))

    def get(self, env: str, name: str) -> str | None:
        return self.vault.load().get(env, {}).get(name)

    def values(self, env: str) -> dict[str, str]:
        return dict(self.vault.load().get(env, {}))

    def set(self, env: str, name: str, value: str) -> None:
        self.vault.set(env, name, value)

    def set_many(self, env: str, values: dict[str, str]) -> None:
        # One decrypt and one sealed write for all of them: 10,000 lines of a .env file
        # would otherwise rewrite the whole vault 10,000 times.
        self.vault.update(lambda data: data.setdefault(env, {}).update(values))

    def delete(self, env: str, name: str) -> bool:
        return self.vault.delete(env, name)

    def close(self) -> None:
        pass
