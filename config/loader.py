"""Reading config.toml into the settings model, with errors that name file, table and key."""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from blindkey.config.errors import ConfigError
from blindkey.config.hosts import AllowEntry, HostError
from blindkey.config.model import (
    AGENT_NAME,
    DEFAULT_POLICY,
    RELEASE_CHANNELS,
    ROUTE_STYLES,
    SECRET_NAME,
    TIERS,
    AllowlistSettings,
    ApprovalSettings,
    AuditSettings,
    LimitSettings,
    ProxySettings,
    Route,
    SecretPolicy,
    Settings,
)
from blindkey.config.stores import (
    AUTH_METHODS,
    BACKENDS,
    DEFAULT_CACHE_TTL,
    OPENBAO_KEYS,
    BackendSettings,
    BrokerSettings,
    OpenBaoSettings,
    bao_address,
    check_openbao,
    environment_names,
    existing_file,
    store_path,
    uid_list,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 1024,
    "MiB": 2**20,
    "GiB": 2**30,
}


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "30s", "500ms" or "2m"')
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f'expected a duration such as "30s", "500ms" or "2m", got {value!r}')
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):  # TOML's nan and inf
        raise ValueError(f"expected a finite duration, got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError('expected a size such as "10MiB"')
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f'expected a size such as "10MiB" or "512KiB", got {value!r}')
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]
    if size <= 0:
        raise ValueError("a size must be greater than zero")
    return size


class _Section:
    """Reads one table, remembering which keys were used so unknown ones are reported."""

    def __init__(self, file: Path, name: str, table: object) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [{name}] must be a table")
        self.file, self.name, self.table = file, name, table
        self.known: list[str] = []

    def get(self, key: str, default: Any, convert: Callable[[Any], Any]) -> Any:
        self.known.append(key)
        if key not in self.table:
            return default
        try:
            return convert(self.table[key])
        except (ValueError, TypeError, HostError) as exc:
            raise ConfigError(f"{self.file}: [{self.name}] {key}: {exc}") from exc

    def finish(self) -> None:
        for key in self.table:
            if key not in self.known:
                hint = difflib.get_close_matches(key, self.known, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(
                    f"{self.file}: [{self.name}] unknown key {key!r}{suggestion}; "
                    f"known keys: {', '.join(self.known)}"
                )


def _typed(kind: type, label: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"expected {label}, got {value!r}")
        return value

    return convert


_BOOL = _typed(bool, "true or false")
DEFAULTS = Settings()


def _string_list(item: Callable[[str], Any] = str) -> Callable[[Any], tuple[Any, ...]]:
    def convert(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(item(v) for v in value)

    return convert


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise ValueError(f"expected a port number from 0 to 65535, got {value!r}")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return convert


def _secret_policy(file: Path, name: str, table: object) -> SecretPolicy:
    if not SECRET_NAME.match(name):
        raise ConfigError(f"{file}: [secrets.{name}] is not a valid secret name")
    section = _Section(file, f"secrets.{name}", table)
    default = DEFAULT_POLICY
    policy = SecretPolicy(
        tier=section.get("tier", default.tier, _one_of(TIERS)),
        hosts=section.get("hosts", default.hosts, _string_list(AllowEntry.binding)),
        agents=section.get("agents", default.agents, _string_list()),
        release=section.get("release", default.release, _string_list(_one_of(RELEASE_CHANNELS))),
        allow_short=section.get("allow_short", default.allow_short, _BOOL),
        approvals=section.get("approvals", default.approvals, _positive_int),
        allow_range=section.get("allow_range", default.allow_range, _BOOL),
    )
    section.finish()
    return policy


def _route(file: Path, name: str, table: object) -> Route:
    if not AGENT_NAME.match(name):
        raise ConfigError(
            f"{file}: [routes.{name}] is not a valid route name (letters, digits, _ . -)"
        )
    section = _Section(file, f"routes.{name}", table)
    text = _typed(str, "a string")
    to = section.get("to", "", text)
    style = section.get("inject", "", _one_of(ROUTE_STYLES))
    secret = section.get("secret", "", text)
    param = section.get("name", "", text)
    section.finish()
    where = f"{file}: [routes.{name}]"
    if not to.lower().startswith(("http://", "https://")):
        raise ConfigError(f"{where} to: an absolute http(s) URL is required, got {to!r}")
    if not style:
        raise ConfigError(f"{where} inject: required ({', '.join(ROUTE_STYLES)})")
    if not SECRET_NAME.match(secret):
        raise ConfigError(f"{where} secret: a secret name is required, got {secret!r}")
    if style in ("header", "query") and not param:
        raise ConfigError(f"{where} name: the {style} name is required for inject = {style!r}")
    return Route(to=to.rstrip("/"), style=style, secret=secret, param=param)


_SECTIONS = (
    "proxy",
    "limits",
    "backend",
    "remote",
    "environments",
    "broker",
    "audit",
    "approvals",
    "allowlist",
    "secrets",
    "routes",
)


def _openbao(section: _Section, *, required: bool) -> OpenBaoSettings | None:
    """The OpenBao keys of [backend] or [remote]; None when no address is given."""
    text = _typed(str, "a string")
    address = section.get("address", "", bao_address)
    settings = OpenBaoSettings(
        address=address,
        mount=section.get("mount", "secret", store_path),
        prefix=section.get("prefix", "blindkey", store_path),
        namespace=section.get("namespace", "", text),
        ca_file=section.get("ca_file", "", existing_file),
        auth=section.get("auth", "token", _one_of(AUTH_METHODS)),
        token_file=section.get("token_file", "", text),
        role_id=section.get("role_id", "", text),
        secret_id_file=section.get("secret_id_file", "", text),
    )
    where = f"{section.file}: [{section.name}]"
    if not address:
        given = [key for key in OPENBAO_KEYS if key in section.table]
        if required or given:
            raise ConfigError(f'{where} address: required (e.g. "https://bao.example.com:8200")')
        return None
    problem = check_openbao(settings)
    if problem:
        raise ConfigError(f"{where} {problem}")
    return settings


def _storage(file: Path, data: Mapping[str, Any]) -> tuple[BackendSettings, OpenBaoSettings | None]:
    backend = _Section(file, "backend", data.get("backend", {}))
    kind = backend.get("kind", "file", _one_of(BACKENDS))
    ttl = backend.get("cache_ttl", DEFAULT_CACHE_TTL, parse_duration)
    if kind == "openbao":
        openbao = _openbao(backend, required=True)
    else:
        stray = [key for key in OPENBAO_KEYS if key in backend.table]
        if stray:
            raise ConfigError(
                f'{file}: [backend] {stray[0]}: only used with kind = "openbao" '
                "(a team store for push and pull goes under [remote])"
            )
        openbao = None
    backend.finish()
    remote_section = _Section(file, "remote", data.get("remote", {}))
    remote = _openbao(remote_section, required=False)
    remote_section.finish()
    return BackendSettings(kind=kind, cache_ttl=ttl, openbao=openbao), remote


def parse_settings(file: Path, data: Mapping[str, Any]) -> Settings:
    for key in data:
        if key not in _SECTIONS:
            hint = difflib.get_close_matches(key, _SECTIONS, n=1)
            suggestion = f" (did you mean [{hint[0]}]?)" if hint else ""
            raise ConfigError(f"{file}: unknown section [{key}]{suggestion}")

    proxy = _Section(file, "proxy", data.get("proxy", {}))
    default = ProxySettings()
    proxy_settings = ProxySettings(
        host=proxy.get("host", default.host, _typed(str, "a host address")),
        port=proxy.get("port", default.port, _port),
        allow_remote=proxy.get("allow_remote", default.allow_remote, _BOOL),
        allowed_peers=proxy.get(
            "allowed_peers", default.allowed_peers, _string_list(ipaddress.ip_network)
        ),
        require_agent_token=proxy.get("require_agent_token", default.require_agent_token, _BOOL),
        upstream_timeout=proxy.get("upstream_timeout", default.upstream_timeout, parse_duration),
        ca_file=proxy.get("ca_file", default.ca_file, _typed(str, "a file path")),
    )
    proxy.finish()
    refused = proxy_settings.bind_error()
    if refused is not None:
        raise ConfigError(f"{file}: [proxy] host: {refused}")
    if proxy_settings.ca_file and not Path(proxy_settings.ca_file).expanduser().is_file():
        raise ConfigError(f"{file}: [proxy] ca_file: no such file {proxy_settings.ca_file!r}")

    limits = _Section(file, "limits", data.get("limits", {}))
    defaults = LimitSettings()
    limit_settings = LimitSettings(
        max_request_body=limits.get("max_request_body", defaults.max_request_body, parse_size),
        max_header_size=limits.get("max_header_size", defaults.max_header_size, parse_size),
        max_headers=limits.get("max_headers", defaults.max_headers, _positive_int),
        max_connections=limits.get("max_connections", defaults.max_connections, _positive_int),
        header_read_timeout=limits.get(
            "header_read_timeout", defaults.header_read_timeout, parse_duration
        ),
        keepalive_idle_timeout=limits.get(
            "keepalive_idle_timeout", defaults.keepalive_idle_timeout, parse_duration
        ),
        body_read_timeout=limits.get(
            "body_read_timeout", defaults.body_read_timeout, parse_duration
        ),
        drain_timeout=limits.get("drain_timeout", defaults.drain_timeout, parse_duration),
        upstream_connect_timeout=limits.get(
            "upstream_connect_timeout", defaults.upstream_connect_timeout, parse_duration
        ),
        upstream_total_timeout=limits.get(
            "upstream_total_timeout", defaults.upstream_total_timeout, parse_duration
        ),
    )
    limits.finish()

    storage, remote = _storage(file, data)

    envs = _Section(file, "environments", data.get("environments", {}))
    names = envs.get("names", DEFAULTS.environments, environment_names)
    active = envs.get("active", DEFAULTS.active_env, _typed(str, "an environment name"))
    envs.finish()
    if active not in names:
        raise ConfigError(
            f"{file}: [environments] active: {active!r} is not one of names {list(names)}"
        )

    broker = _Section(file, "broker", data.get("broker", {}))
    broker_settings = BrokerSettings(
        socket=broker.get("socket", DEFAULTS.broker.socket, _typed(str, "a socket path")),
        allowed_uids=broker.get("allowed_uids", DEFAULTS.broker.allowed_uids, uid_list),
        release_uids=broker.get("release_uids", DEFAULTS.broker.release_uids, uid_list),
    )
    broker.finish()

    audit = _Section(file, "audit", data.get("audit", {}))
    audit_settings = AuditSettings(
        fsync=audit.get("fsync", DEFAULTS.audit.fsync, _BOOL),
        rotate_mb=audit.get("rotate_mb", DEFAULTS.audit.rotate_mb, _positive_int),
        keep_days=audit.get("keep_days", DEFAULTS.audit.keep_days, _positive_int),
    )
    audit.finish()

    approvals = _Section(file, "approvals", data.get("approvals", {}))
    approval_settings = ApprovalSettings(
        controlled_ttl=approvals.get(
            "controlled_ttl", DEFAULTS.approvals.controlled_ttl, parse_duration
        ),
        restricted_ttl=approvals.get(
            "restricted_ttl", DEFAULTS.approvals.restricted_ttl, parse_duration
        ),
        elevate_ttl=approvals.get("elevate_ttl", DEFAULTS.approvals.elevate_ttl, parse_duration),
    )
    approvals.finish()

    allow = _Section(file, "allowlist", data.get("allowlist", {}))
    allowlist = AllowlistSettings(
        entries=allow.get("hosts", DEFAULTS.allowlist.entries, _string_list(AllowEntry.parse)),
        private_ranges=allow.get(
            "private_ranges", DEFAULTS.allowlist.private_ranges, _string_list(ipaddress.ip_network)
        ),
    )
    allow.finish()

    secrets_table = data.get("secrets", {})
    if not isinstance(secrets_table, dict):
        raise ConfigError(f"{file}: [secrets] must be a table of [secrets.NAME] tables")
    secrets = {name: _secret_policy(file, name, table) for name, table in secrets_table.items()}
    routes_table = data.get("routes", {})
    if not isinstance(routes_table, dict):
        raise ConfigError(f"{file}: [routes] must be a table of [routes.NAME] tables")
    routes = {name: _route(file, name, table) for name, table in routes_table.items()}
    return Settings(
        proxy=proxy_settings,
        limits=limit_settings,
        allowlist=allowlist,
        secrets=secrets,
        backend=storage.kind,
        environments=names,
        active_env=active,
        storage=storage,
        remote=remote,
        broker=broker_settings,
        audit=audit_settings,
        approvals=approval_settings,
        routes=routes,
    )


def read_config_text(file: Path) -> str:
    """The file's text, or ConfigError saying why it cannot be had."""
    try:
        raw = file.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: no such file; run `blindkey init` to create it") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text") from exc


def load_settings(file: Path) -> Settings:
    text = read_config_text(file)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    return parse_settings(file, data)
