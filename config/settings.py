"""The settings model and its loading from config.toml, with errors that name the key."""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blindkey.config.errors import ConfigError
from blindkey.config.hosts import AllowEntry, HostError, HostPattern
from blindkey.config.stores import (
    AUTH_METHODS,
    BACKENDS,
    DEFAULT_CACHE_TTL,
    DEFAULT_ENVIRONMENTS,
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

# \Z, not $: `$` also matches before a trailing newline.
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}\Z")
AGENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
TIERS = ("open", "controlled", "restricted")
RELEASE_CHANNELS = ("proxy", "env", "exec")
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
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address: only processes of this machine can reach it."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 8765
    # A non-loopback host needs allow_remote; then every caller needs an agent token and
    # callers of other machines must be in allowed_peers.
    allow_remote: bool = False
    allowed_peers: tuple[IPNetwork, ...] = ()
    require_agent_token: bool = True
    upstream_timeout: float = 30.0
    ca_file: str = ""

    def bind_error(self, host: str | None = None) -> str | None:
        """Why listening on `host` (default: this host) is refused, or None."""
        host = self.host if host is None else host
        if self.allow_remote or is_loopback_host(host):
            return None
        return (
            f"{host} is not a loopback address: agents on other machines could call the "
            "proxy. Set [proxy] allow_remote = true or pass --allow-remote to mean it (agent "
            "tokens are then always required, and remote callers must be in allowed_peers)"
        )


@dataclass(frozen=True)
class LimitSettings:
    """Bounds that keep a hostile agent or upstream from exhausting the daemon."""

    max_request_body: int = 10 * 2**20
    max_header_size: int = 16 * 2**10
    max_headers: int = 100
    max_connections: int = 1024
    header_read_timeout: float = 10.0
    keepalive_idle_timeout: float = 15.0
    body_read_timeout: float = 30.0
    drain_timeout: float = 10.0
    upstream_connect_timeout: float = 10.0
    upstream_total_timeout: float = 900.0


@dataclass(frozen=True)
class AllowlistSettings:
    entries: tuple[AllowEntry, ...] = ()
    private_ranges: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class SecretPolicy:
    tier: str = "open"
    hosts: tuple[HostPattern, ...] = ()
    agents: tuple[str, ...] = ("*",)
    release: tuple[str, ...] = ("proxy",)
    # Stored with --allow-short: too short to redact reliably, so every use is audited as such.
    allow_short: bool = False

    def allows_agent(self, agent: str) -> bool:
        return "*" in self.agents or agent in self.agents

    def allows_host(self, host: str) -> bool:
        return not self.hosts or any(pattern.matches(host) for pattern in self.hosts)


DEFAULT_POLICY = SecretPolicy()  # a secret without a [secrets.NAME] table


@dataclass(frozen=True)
class Settings:
    proxy: ProxySettings = field(default_factory=ProxySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    allowlist: AllowlistSettings = field(default_factory=AllowlistSettings)
    secrets: Mapping[str, SecretPolicy] = field(default_factory=dict)
    backend: str = "file"
    environments: tuple[str, ...] = DEFAULT_ENVIRONMENTS
    active_env: str = "development"
    storage: BackendSettings = field(default_factory=BackendSettings)
    remote: OpenBaoSettings | None = None
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    # fsync each group of audit records; off trades crash safety of the last records for speed
    audit_fsync: bool = True

    def policy(self, name: str) -> SecretPolicy:
        return self.secrets.get(name, DEFAULT_POLICY)


DEFAULT_CONFIG = """\
# blindkey configuration. `blindkey config check` validates this file;
# `blindkey allowlist ...` and `blindkey secrets set ...` edit it for you.

[proxy]
host = "127.0.0.1"                # a non-loopback address needs allow_remote = true
port = 8765
allow_remote = false              # true: agent tokens always required, peers in allowed_peers only
allowed_peers = []                # CIDRs of remote callers when allow_remote = true
require_agent_token = true        # false: anonymous local callers act as agent "anonymous"
upstream_timeout = "30s"
ca_file = ""                      # extra CA bundle for upstream TLS

[limits]
max_request_body = "10MiB"        # bodies that must be buffered (body/form injection)
max_header_size = "16KiB"         # one request line or header field, from agents and upstreams
max_headers = 100                 # header fields per request
max_connections = 1024            # agent connections open at once
header_read_timeout = "10s"       # a client must send its headers within this (slowloris)
keepalive_idle_timeout = "15s"    # an idle keep-alive connection is closed after this; at the
                                  # connection cap the idlest ones are closed first
body_read_timeout = "30s"         # a body buffered for Body-*/Form-* injection must arrive in this
drain_timeout = "10s"             # on stop, calls in flight get this long; then they are cut
upstream_connect_timeout = "10s"
upstream_total_timeout = "15m"    # whole exchange, streams included; upstream_timeout is per read

[backend]
# file: the encrypted vault next to this file; keyring: the OS keychain;
# openbao: OpenBao or Vault KV v2 (with the keys shown under [remote] below)
kind = "file"
cache_ttl = "5m"                  # keyring, openbao: how long the broker keeps a value read

# [remote]                        # a team store for `secrets push|pull|diff`
# address = "https://bao.example.com:8200"
# mount = "secret"                # KV v2 mount; values at <mount>/<prefix>/<env>/<NAME>
# prefix = "blindkey"
# namespace = ""
# ca_file = ""
# auth = "token"                  # token: token_file, else $BAO_TOKEN / $VAULT_TOKEN
# token_file = ""                 # approle: role_id and secret_id_file
# role_id = ""
# secret_id_file = ""

[environments]
names = ["development", "staging", "production"]
active = "development"

[broker]
socket = ""                       # set: connect to a broker run as its own service
allowed_uids = []                 # users besides the broker's own that may connect

[audit]
fsync = true                      # false: faster, but a crash may lose the last records

[allowlist]
# host (https:443), host:port (https), *.example.com, http://host[:port], https://host:port
hosts = []
private_ranges = []               # CIDRs a resolved hostname may land in

# [secrets.GITHUB_TOKEN]          # metadata only; values live in the backend
# tier = "open"                   # open | controlled | restricted
# hosts = ["api.github.com"]      # empty: any allowlisted host
# agents = ["*"]
# release = ["proxy"]             # channels that may hand out the value: proxy, env, exec
"""


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
    release = section.get("release", ("proxy",), _string_list(_one_of(RELEASE_CHANNELS)))
    policy = SecretPolicy(
        tier=section.get("tier", "open", _one_of(TIERS)),
        hosts=section.get("hosts", (), _string_list(HostPattern.parse)),
        agents=section.get("agents", ("*",), _string_list()),
        release=release,
        allow_short=section.get("allow_short", False, _typed(bool, "true or false")),
    )
    section.finish()
    return policy


_SECTIONS = (
    "proxy",
    "limits",
    "backend",
    "remote",
    "environments",
    "broker",
    "audit",
    "allowlist",
    "secrets",
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
    proxy_settings = ProxySettings(
        host=proxy.get("host", "127.0.0.1", _typed(str, "a host address")),
        port=proxy.get("port", 8765, _port),
        allow_remote=proxy.get("allow_remote", False, _typed(bool, "true or false")),
        allowed_peers=proxy.get("allowed_peers", (), _string_list(ipaddress.ip_network)),
        require_agent_token=proxy.get("require_agent_token", True, _typed(bool, "true or false")),
        upstream_timeout=proxy.get("upstream_timeout", 30.0, parse_duration),
        ca_file=proxy.get("ca_file", "", _typed(str, "a file path")),
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
    names = envs.get("names", DEFAULT_ENVIRONMENTS, environment_names)
    active = envs.get("active", "development", _typed(str, "an environment name"))
    envs.finish()
    if active not in names:
        raise ConfigError(
            f"{file}: [environments] active: {active!r} is not one of names {list(names)}"
        )

    broker = _Section(file, "broker", data.get("broker", {}))
    broker_settings = BrokerSettings(
        socket=broker.get("socket", "", _typed(str, "a socket path")),
        allowed_uids=broker.get("allowed_uids", (), uid_list),
    )
    broker.finish()

    audit = _Section(file, "audit", data.get("audit", {}))
    audit_fsync = audit.get("fsync", True, _typed(bool, "true or false"))
    audit.finish()

    allow = _Section(file, "allowlist", data.get("allowlist", {}))
    allowlist = AllowlistSettings(
        entries=allow.get("hosts", (), _string_list(AllowEntry.parse)),
        private_ranges=allow.get("private_ranges", (), _string_list(ipaddress.ip_network)),
    )
    allow.finish()

    secrets_table = data.get("secrets", {})
    if not isinstance(secrets_table, dict):
        raise ConfigError(f"{file}: [secrets] must be a table of [secrets.NAME] tables")
    secrets = {name: _secret_policy(file, name, table) for name, table in secrets_table.items()}
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
        audit_fsync=audit_fsync,
    )


def load_settings(file: Path) -> Settings:
    try:
        raw = file.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: no such file; run `blindkey init` to create it") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    return parse_settings(file, data)
