"""Where values live: the models of [backend], [remote], [broker] and [environments].

loader.py reads the TOML; this module holds the shapes and the checks of single values,
so the backends in broker/ can depend on them without pulling in the whole parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BACKENDS = ("file", "keyring", "openbao")
AUTH_METHODS = ("token", "approle")
DEFAULT_ENVIRONMENTS = ("development", "staging", "production")
# Switching to it, or writing into it, asks first (--yes in scripts).
PRODUCTION = "production"
# Environment names become keychain account names and OpenBao path segments.
ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_PATH = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*\Z")
DEFAULT_CACHE_TTL = 300.0
# Keys an OpenBao/Vault store takes, in [backend] (with kind = "openbao") and in [remote].
OPENBAO_KEYS = (
    "address",
    "mount",
    "prefix",
    "namespace",
    "ca_file",
    "auth",
    "token_file",
    "role_id",
    "secret_id_file",
)


@dataclass(frozen=True)
class OpenBaoSettings:
    """A KV v2 store: values at `<mount>/data/<prefix>/<env>/<NAME>`, field `value`."""

    address: str
    mount: str = "secret"
    prefix: str = "blindkey"
    namespace: str = ""
    ca_file: str = ""
    auth: str = "token"
    token_file: str = ""
    role_id: str = ""
    secret_id_file: str = ""


@dataclass(frozen=True)
class BackendSettings:
    kind: str = "file"
    # keyring and openbao: how long a value read stays in the broker's memory
    cache_ttl: float = DEFAULT_CACHE_TTL
    openbao: OpenBaoSettings | None = None


@dataclass(frozen=True)
class BrokerSettings:
    """A broker that runs as its own service: the proxy connects instead of spawning one."""

    socket: str = ""
    allowed_uids: tuple[int, ...] = field(default_factory=tuple)
    # Agents' users: values released to env and exec, and mcp; never a proxy's resolve.
    release_uids: tuple[int, ...] = field(default_factory=tuple)


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
