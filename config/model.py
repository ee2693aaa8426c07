"""What blindkey's settings are: the shapes of config.toml's tables and their defaults.

The defaults are written here once; config/template.py renders the default config.toml
from them and config/loader.py falls back to them for every key a file leaves out.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from blindkey.config.hosts import AllowEntry
from blindkey.config.stores import (
    DEFAULT_ENVIRONMENTS,
    BackendSettings,
    BrokerSettings,
    OpenBaoSettings,
)

# \Z, not $: `$` also matches before a trailing newline.
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}\Z")
AGENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
TIERS = ("open", "controlled", "restricted")
RELEASE_CHANNELS = ("proxy", "env", "exec")
# How a route puts its secret into the request: as the SDK would have put its own key.
ROUTE_STYLES = ("bearer", "basic", "header", "query")
# Values shorter than this match ordinary text: refused unless stored with --allow-short.
MIN_REDACTABLE = 8
# The longest value the redactor matches (refused at `secrets set`, never found per request).
MAX_VALUE_BYTES = 64 * 1024

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
    # Where the value may go: allowlist entries (scheme, host pattern and port, exactly).
    hosts: tuple[AllowEntry, ...] = ()
    agents: tuple[str, ...] = ("*",)
    release: tuple[str, ...] = ("proxy",)
    # Stored with --allow-short: too short to redact reliably, so every use is audited as such.
    allow_short: bool = False
    # Distinct approvers whose codes a grant of this secret needs (controlled, restricted).
    approvals: int = 1
    # Calls that inject this secret may send Range/If-Range and get a 206 back. Off, both
    # are stripped and a 206 refused: a part of an answer can be a slice of a stored value
    # too short for the redactor to recognise, read back piece by piece.
    allow_range: bool = False

    def allows_agent(self, agent: str) -> bool:
        return "*" in self.agents or agent in self.agents

    def allows_host(self, scheme: str, host: str, port: int) -> bool:
        return not self.hosts or any(entry.matches(scheme, host, port) for entry in self.hosts)


DEFAULT_POLICY = SecretPolicy()  # a secret without a [secrets.NAME] table


@dataclass(frozen=True)
class ApprovalSettings:
    """How long a grant lasts by tier (also the most `approve --for` may ask), and elevate."""

    controlled_ttl: float = 4 * 3600.0
    restricted_ttl: float = 15 * 60.0
    elevate_ttl: float = 30 * 60.0

    def grant_ttl(self, tier: str) -> float | None:
        """The longest grant of a tier; None for open (no grant needed)."""
        return {"controlled": self.controlled_ttl, "restricted": self.restricted_ttl}.get(tier)


@dataclass(frozen=True)
class AuditSettings:
    # fsync each group of records; off trades crash safety of the last records for speed
    fsync: bool = True
    rotate_mb: int = 64
    keep_days: int = 90


@dataclass(frozen=True)
class Route:
    """`/r/NAME/REST` goes to `to` + REST with `secret` injected in `style`."""

    to: str
    style: str
    secret: str
    # The header (style header) or query parameter (style query) that carries the value.
    param: str = ""


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
    audit: AuditSettings = field(default_factory=AuditSettings)
    approvals: ApprovalSettings = field(default_factory=ApprovalSettings)
    routes: Mapping[str, Route] = field(default_factory=dict)

    @property
    def audit_fsync(self) -> bool:
        return self.audit.fsync

    def policy(self, name: str) -> SecretPolicy:
        return self.secrets.get(name, DEFAULT_POLICY)
