"""What blindkey's settings are: config.toml's tables, each key declared once.

Each field carries its key (config/fields.py): how its value is read, its default and the
comment the template writes beside it. config/loader.py reads a file by these fields,
config/template.py renders the default config.toml from them and config/docs.py writes
docs/configuration.md; none of them lists a key of its own.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from blindkey.config.addresses import is_loopback_host
from blindkey.config.fields import Invalid, named_tables, setting, table
from blindkey.config.hosts import AllowEntry
from blindkey.config.outputs import MetricsSettings, NotifySettings, ShipSettings
from blindkey.config.request_rules import (
    AgentPolicy,
    PolicySettings,
)
from blindkey.config.secrets_table import (
    DEFAULT_POLICY,
    SecretPolicy,
)
from blindkey.config.spend import MODEL_NAME, ModelPrice
from blindkey.config.stores import (
    BackendSettings,
    BrokerSettings,
    EnvironmentSettings,
    OpenBaoSettings,
)
from blindkey.config.values import (
    BOOL,
    DURATION,
    NETWORKS,
    PORT,
    POSITIVE,
    SIZE,
    choice,
    string_list,
    text,
)

# \Z, not $: `$` also matches before a trailing newline.
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}\Z")
AGENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
# How a route puts its secret into the request: as the SDK would have put its own key.
ROUTE_STYLES = ("bearer", "basic", "header", "query", "sigv4")
# Values shorter than this match ordinary text: refused unless stored with --allow-short.
MIN_REDACTABLE = 8
# The longest value the redactor matches (refused at `secrets set`, never found per request).
MAX_VALUE_BYTES = 64 * 1024

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _entry_text(entry: AllowEntry) -> str:
    return entry.text


@dataclass(frozen=True)
class ProxySettings:
    host: str = setting(
        text("a host address"), "127.0.0.1", "a non-loopback address needs allow_remote = true"
    )
    port: int = setting(PORT, 8765, doc="where agents call the proxy (0: any free port)")
    # A non-loopback host needs allow_remote; then every caller needs an agent token and
    # callers of other machines must be in allowed_peers.
    allow_remote: bool = setting(
        BOOL, False, "true: agent tokens always required, peers in allowed_peers only"
    )
    allowed_peers: tuple[IPNetwork, ...] = setting(
        NETWORKS, (), "CIDRs of remote callers when allow_remote = true"
    )
    require_agent_token: bool = setting(
        BOOL, True, 'false: anonymous local callers act as agent "anonymous"'
    )
    upstream_timeout: float = setting(
        DURATION, 30.0, doc="the longest wait for each read from an upstream"
    )
    ca_file: str = setting(text("a file path"), "", "extra CA bundle for upstream TLS")

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

    def checked(self) -> ProxySettings:
        refused = self.bind_error()
        if refused is not None:
            raise Invalid("host", refused)
        if self.ca_file and not Path(self.ca_file).expanduser().is_file():
            raise Invalid("ca_file", f"no such file {self.ca_file!r}")
        return self


@dataclass(frozen=True)
class LimitSettings:
    """Bounds that keep a hostile agent or upstream from exhausting the daemon."""

    max_request_body: int = setting(
        SIZE, 10 * 2**20, "bodies that must be buffered (body/form injection)"
    )
    max_header_size: int = setting(
        SIZE, 16 * 2**10, "one request line or header field, from agents and upstreams"
    )
    max_headers: int = setting(POSITIVE, 100, "header fields per request")
    max_connections: int = setting(POSITIVE, 1024, "agent connections open at once")
    header_read_timeout: float = setting(
        DURATION, 10.0, "a client must send its headers within this (slowloris)"
    )
    keepalive_idle_timeout: float = setting(
        DURATION,
        15.0,
        "an idle keep-alive connection is closed after this; at the\n"
        "connection cap the idlest ones are closed first",
    )
    body_read_timeout: float = setting(
        DURATION, 30.0, "a body buffered for Body-*/Form-* injection must arrive in this"
    )
    drain_timeout: float = setting(
        DURATION, 10.0, "on stop, calls in flight get this long; then they are cut"
    )
    upstream_connect_timeout: float = setting(
        DURATION, 10.0, doc="the longest wait for a connection to an upstream"
    )
    upstream_total_timeout: float = setting(
        DURATION, 900.0, "whole exchange, streams included; upstream_timeout is per read"
    )


_ALLOW_ENTRIES = string_list(AllowEntry.parse, _entry_text, "list of allowlist entries")


@dataclass(frozen=True)
class AllowlistSettings:
    entries: tuple[AllowEntry, ...] = setting(
        _ALLOW_ENTRIES, (), key="hosts", doc="where agents may send requests (forms above)"
    )
    private_ranges: tuple[IPNetwork, ...] = setting(
        NETWORKS, (), "CIDRs a resolved hostname may land in"
    )


@dataclass(frozen=True)
class ApprovalSettings:
    """How long a grant lasts by tier (also the most `approve --for` may ask), and elevate."""

    controlled_ttl: float = setting(DURATION, 4 * 3600.0, doc="a grant of a controlled secret")
    restricted_ttl: float = setting(DURATION, 15 * 60.0, doc="a grant of a restricted secret")
    elevate_ttl: float = setting(
        DURATION, 30 * 60.0, "window opened by `sudo blindkey elevate CODE`"
    )

    def grant_ttl(self, tier: str) -> float | None:
        """The longest grant of a tier; None for open (no grant needed)."""
        return {"controlled": self.controlled_ttl, "restricted": self.restricted_ttl}.get(tier)


@dataclass(frozen=True)
class AuditSettings:
    # fsync each group of records; off trades crash safety of the last records for speed
    fsync: bool = setting(BOOL, True, "false: faster, but a crash may lose the last records")
    rotate_mb: int = setting(POSITIVE, 64, "start a new file past this size")
    keep_days: int = setting(POSITIVE, 90, "delete rotated files older than this")
    # Signed checkpoints (audit/checkpoint.py): a copy is verifiable up to the last one.
    checkpoint_every: int = setting(
        POSITIVE,
        1000,
        "sign the chain's head (Ed25519) every this many records, and at rotation",
        doc="how often the audit's writer signs the chain's head (`event: checkpoint`); "
        "`audit verify --file` checks a copy up to its last checkpoint",
    )


@dataclass(frozen=True)
class Route:
    """`/r/NAME/REST` goes to `to` + REST with `secret` injected in `style`."""

    to: str = setting(
        text(),
        "",
        doc="the upstream base URL: `/r/NAME/REST` goes to it + REST",
        example="https://api.openai.com",
        required=True,
    )
    style: str = setting(
        choice(ROUTE_STYLES),
        "",
        " | ".join(ROUTE_STYLES),
        doc="how the secret goes in: as a bearer token, basic auth, a header, a query parameter, "
        "or a SigV4 signature made with an aws secret",
        example="bearer",
        required=True,
        key="inject",
    )
    secret: str = setting(
        text(), "", doc="the secret injected", example="OPENAI_API_KEY", required=True
    )
    # The header (style header) or query parameter (style query) that carries the value.
    param: str = setting(
        text(), "", "the header or query parameter, for header | query", key="name"
    )

    def checked(self) -> Route:
        if not self.to.lower().startswith(("http://", "https://")):
            raise Invalid("to", f"an absolute http(s) URL is required, got {self.to!r}")
        if not self.style:
            raise Invalid("inject", f"required ({', '.join(ROUTE_STYLES)})")
        if not SECRET_NAME.match(self.secret):
            raise Invalid("secret", f"a secret name is required, got {self.secret!r}")
        if self.style in ("header", "query") and not self.param:
            raise Invalid("name", f"the {self.style} name is required for inject = {self.style!r}")
        return replace(self, to=self.to.rstrip("/"))


@dataclass(frozen=True)
class Settings:
    """config.toml: each field is one table, in the order `blindkey init` writes them."""

    proxy: ProxySettings = field(default_factory=ProxySettings, metadata=table("proxy"))
    limits: LimitSettings = field(default_factory=LimitSettings, metadata=table("limits"))
    storage: BackendSettings = field(
        default_factory=BackendSettings,
        metadata=table(
            "backend",
            notes=(
                "file: the encrypted vault next to this file; keyring: the OS keychain;",
                "openbao: OpenBao or Vault KV v2 (with the keys shown under [remote] below)",
            ),
        ),
    )
    remote: OpenBaoSettings | None = field(
        default=None,
        metadata=table(
            "remote",
            OpenBaoSettings,
            comment="a team store for `secrets push|pull|diff`",
            optional=True,
        ),
    )
    envs: EnvironmentSettings = field(
        default_factory=EnvironmentSettings, metadata=table("environments")
    )
    broker: BrokerSettings = field(default_factory=BrokerSettings, metadata=table("broker"))
    audit: AuditSettings = field(default_factory=AuditSettings, metadata=table("audit"))
    audit_ship: ShipSettings = field(
        default_factory=ShipSettings,
        metadata=table("audit.ship", comment="copies of the audit for a SIEM (empty: none)"),
    )
    # After [audit.ship]: a table between [audit] and [audit.ship] splits [audit] in two.
    metrics: MetricsSettings = field(default_factory=MetricsSettings, metadata=table("metrics"))
    approvals: ApprovalSettings = field(
        default_factory=ApprovalSettings,
        metadata=table("approvals", comment="how long a grant lasts (and the most --for asks)"),
    )
    notify: NotifySettings = field(
        default_factory=NotifySettings,
        metadata=table("notify", comment="tell approvers a call waits for them"),
    )
    allowlist: AllowlistSettings = field(
        default_factory=AllowlistSettings,
        metadata=table(
            "allowlist",
            notes=(
                "host (https:443), host:port (https), *.example.com, http://host[:port], "
                "https://host:port",
            ),
        ),
    )
    secrets: Mapping[str, SecretPolicy] = field(
        default_factory=dict,
        metadata=named_tables(
            "secrets",
            SecretPolicy,
            "GITHUB_TOKEN",
            names=SECRET_NAME,
            bad_name="is not a valid secret name",
            comment="metadata only; values live in the backend",
        ),
    )
    agents: Mapping[str, AgentPolicy] = field(
        default_factory=dict,
        metadata=named_tables(
            "agents",
            AgentPolicy,
            "builder",
            names=AGENT_NAME,
            bad_name="is not a valid agent name (letters, digits, _ . -)",
            comment="optional policy of one agent",
        ),
    )
    request_policy: PolicySettings = field(default_factory=PolicySettings, metadata=table("policy"))
    prices: Mapping[str, ModelPrice] = field(
        default_factory=dict,
        metadata=named_tables(
            "prices",
            ModelPrice,
            "gpt-4o",
            names=MODEL_NAME,
            bad_name="is not a model name",
            comment="USD per million tokens, for usage records and budgets",
        ),
    )
    routes: Mapping[str, Route] = field(
        default_factory=dict,
        metadata=named_tables(
            "routes",
            Route,
            "openai",
            names=AGENT_NAME,
            bad_name="is not a valid route name (letters, digits, _ . -)",
            comment="/r/openai/... for SDKs given base_url (`route add`)",
        ),
    )

    @property
    def backend(self) -> str:
        return self.storage.kind

    @property
    def environments(self) -> tuple[str, ...]:
        return self.envs.names

    @property
    def active_env(self) -> str:
        return self.envs.active

    @property
    def audit_fsync(self) -> bool:
        return self.audit.fsync

    def policy(self, name: str) -> SecretPolicy:
        return self.secrets.get(name, DEFAULT_POLICY)

    # Read by every proxied call: worked out once per loaded configuration (a secret
    # without a table has the defaults, which allow neither).
    @functools.cached_property
    def short_allowed(self) -> frozenset[str]:
        """The secrets stored with --allow-short."""
        return frozenset(name for name, policy in self.secrets.items() if policy.allow_short)

    @functools.cached_property
    def range_allowed(self) -> frozenset[str]:
        """The secrets whose calls may send Range and get parts back (allow_range)."""
        return frozenset(name for name, policy in self.secrets.items() if policy.allow_range)
