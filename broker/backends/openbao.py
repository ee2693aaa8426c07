"""OpenBao or Vault, KV v2: `<mount>/data/<prefix>/<env>/<NAME>`, the value in field `value`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from blindkey.broker.backends import BackendError, set_one_by_one, values_one_by_one
from blindkey.broker.backends.bao_http import BaoHttp
from blindkey.config.model import SECRET_NAME
from blindkey.config.stores import OpenBaoSettings

FIELD = "value"


class OpenBaoBackend:
    kind = "openbao"

    def __init__(self, settings: OpenBaoSettings) -> None:
        self.settings = settings
        self.http = BaoHttp(settings)

    def describe(self) -> str:
        s = self.settings
        space = f" namespace {s.namespace}" if s.namespace else ""
        return f"OpenBao at {s.address}{space} ({s.mount}/{s.prefix})"

    def _path(self, kind: str, env: str, name: str = "") -> str:
        s = self.settings
        tail = f"{s.prefix}/{env}/{name}" if name else f"{s.prefix}/{env}/"
        return f"/v1/{quote(s.mount)}/{kind}/{quote(tail)}"

    def watched(self) -> tuple[Path, ...]:
        return ()

    def changed(self) -> set[tuple[str, str]] | None:
        return None

    def names(self, env: str) -> set[str]:
        status, data = self.http.call("GET", self._path("metadata", env) + "?list=true")
        if status == 404:
            return set()
        if status != 200:
            raise self.http.failure(status, data, f"list the secrets of {env}")
        keys = (data.get("data") or {}).get("keys") or []
        # Folders end in "/"; names blindkey could not use are someone else's.
        return {k for k in keys if isinstance(k, str) and SECRET_NAME.fullmatch(k)}

    def get(self, env: str, name: str) -> str | None:
        status, data = self.http.call("GET", self._path("data", env, name))
        if status == 404:
            return None
        if status != 200:
            raise self.http.failure(status, data, f"read {name} in {env}")
        fields = (data.get("data") or {}).get("data")
        if fields is None:  # the latest version was deleted
            return None
        value = fields.get(FIELD) if isinstance(fields, dict) else None
        if not isinstance(value, str):
            raise BackendError(
                f"{self.describe()}: {env}/{name} has no string field {FIELD!r}; write it "
                "with `blindkey secrets set` or `bao kv put ... value=...`"
            )
        return value

    def values(self, env: str) -> dict[str, str]:
        return values_one_by_one(self, env)

    def set(self, env: str, name: str, value: str) -> None:
        body = {"data": {FIELD: value}}
        status, data = self.http.call("POST", self._path("data", env, name), body)
        if status not in (200, 204):
            raise self.http.failure(status, data, f"write {name} in {env}")

    def set_many(self, env: str, values: dict[str, str]) -> None:
        set_one_by_one(self, env, values)

    def delete(self, env: str, name: str) -> bool:
        path = self._path("metadata", env, name)
        status, data = self.http.call("GET", path)
        if status == 404:
            return False
        if status != 200:
            raise self.http.failure(status, data, f"read the metadata of {name} in {env}")
        # The metadata, not just the latest version: the name leaves the listing, and a
        # deleted value cannot come back with `bao kv undelete`.
        status, data = self.http.call("DELETE", path)
        if status not in (200, 204):
            raise self.http.failure(status, data, f"delete {name} in {env}")
        return True

    def close(self) -> None:
        self.http.close()
