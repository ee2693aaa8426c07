"""Where values live: the models of [backend], [remote], [broker] and [environments].

Each field declares its key (parser, default, comment: config/fields.py); loader.py reads
the TOML by them. The models live apart from the loader so the backends in broker/ can
depend on them without pulling in the whole parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from blindkey.config.fields import Invalid, keys, setting
from blindkey.config.values import DURATION, Kind, choice, text, toml_value

BACKENDS = ("file", "keyring", "openbao")
AUTH_METHODS = ("token", "approle")
DEFAULT_ENVIRONMENTS = ("development", "staging", "production")
# Switching to it, or writing into it, asks first (--yes in scripts).
PRODUCTION = "production"
# Environment names become keychain account names and OpenBao path segments.
ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_PATH = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*\Z")
DEFAULT_CACHE_TTL = 300.0


def bao_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as https://bao.example.com:8200, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"expected an http(s) URL such as https://bao.example.com:8200, got {value!r}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"expected scheme, host and port only, got {value!r}")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}") from exc
    return value.rstrip("/")


def store_path(value: Any) -> str:
    if not isinstance(value, str) or not _PATH.fullmatch(value.strip("/")):
        raise ValueError(f"expected a path such as secret or team/kv, got {value!r}")
    if ".." in value.split("/"):
        raise ValueError(f"'..' is not allowed in a path, got {value!r}")
    return value.strip("/")


def existing_file(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a file path, got {value!r}")
    if value and not Path(value).expanduser().is_file():
        raise ValueError(f"no such file {value!r}")
    return value


def uid_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ValueError(f"expected a list of numeric user ids, got {value!r}")
    return tuple(value)


def environment_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    if not value:
        raise ValueError("at least one environment is needed")
    for name in value:
        if not ENV_NAME.fullmatch(name):
            raise ValueError(
                f"invalid environment name {name!r}: letters, digits, '_' and '-' (at most 64)"
            )
    if len(set(value)) != len(value):
        raise ValueError(f"environment names repeat: {value!r}")
    return tuple(value)


def check_openbao(settings: OpenBaoSettings) -> str | None:
    """What is missing for the chosen auth method, or None."""
    if settings.auth == "approle" and not (settings.role_id and settings.secret_id_file):
        return 'auth = "approle" needs role_id and secret_id_file'
    return None


_STORE_PATH = Kind(store_path, toml_value, "path (`secret`, `team/kv`)")
_UIDS = Kind(uid_list, toml_value, "list of numeric user ids")


@dataclass(frozen=True)
class OpenBaoSettings:
    """A KV v2 store: values at `<mount>/data/<prefix>/<env>/<NAME>`, field `value`."""

    address: str = setting(
        Kind(bao_address, toml_value, "http(s) URL: scheme, host and port"),
        "",
        doc="where the store answers",
        example="https://bao.example.com:8200",
        required=True,
    )
    mount: str = setting(
        _STORE_PATH, "secret", "KV v2 mount; values at <mount>/<prefix>/<env>/<NAME>"
    )
    prefix: str = setting(_STORE_PATH, "blindkey", doc="the path under the mount")
    namespace: str = setting(text(), "", doc="OpenBao/Vault Enterprise namespace")
    ca_file: str = setting(
        Kind(existing_file, toml_value, "file path"),
        "",
        doc="CA bundle the store's TLS is checked with",
    )
    auth: str = setting(
        choice(AUTH_METHODS), "token", "token: token_file, else $BAO_TOKEN / $VAULT_TOKEN"
    )
    token_file: str = setting(
        text(),
        "",
        "approle: role_id and secret_id_file",
        doc="file holding the token (auth = token); unset: $BAO_TOKEN, else $VAULT_TOKEN",
    )
    role_id: str = setting(text(), "", doc="the AppRole's role id (auth = approle)")
    secret_id_file: str = setting(
        text(), "", doc="file holding the AppRole's secret id (auth = approle)"
    )

    def checked(self) -> OpenBaoSettings:
        problem = check_openbao(self)
        if problem:
            raise Invalid("", problem)
        return self


@dataclass(frozen=True)
class BackendSettings:
    kind: str = setting(choice(BACKENDS), "file", doc="where values are kept (the notes above)")
    # keyring and openbao: how long a value read stays in the broker's memory
    cache_ttl: float = setting(
        DURATION, DEFAULT_CACHE_TTL, "keyring, openbao: how long the broker keeps a value read"
    )
    # kind = "openbao": the keys of OpenBaoSettings, in this same [backend] table.
    openbao: OpenBaoSettings | None = None


@dataclass(frozen=True)
class EnvironmentSettings:
    names: tuple[str, ...] = setting(
        Kind(environment_names, toml_value, "list of environment names"),
        DEFAULT_ENVIRONMENTS,
        doc="the environments a secret can hold a value in",
    )
    active: str = setting(
        text("an environment name"), "development", doc="the environment whose values are used"
    )

    def checked(self) -> EnvironmentSettings:
        if self.active not in self.names:
            raise Invalid("active", f"{self.active!r} is not one of names {list(self.names)}")
        return self


@dataclass(frozen=True)
class BrokerSettings:
    """A broker that runs as its own service: the proxy connects instead of spawning one."""

    socket: str = setting(
        text("a socket path"), "", "set: connect to a broker run as its own service"
    )
    allowed_uids: tuple[int, ...] = setting(
        _UIDS, (), "users besides the broker's own that may connect"
    )
    # Agents' users: values released to env and exec, and mcp; never a proxy's resolve.
    release_uids: tuple[int, ...] = setting(_UIDS, (), "agents' users: env, exec and mcp only")


# Keys an OpenBao/Vault store takes, in [backend] (with kind = "openbao") and in [remote].
OPENBAO_KEYS = tuple(key.name for key in keys(OpenBaoSettings))
