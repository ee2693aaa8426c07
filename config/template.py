"""The config.toml that `blindkey init` writes, rendered from the model's defaults.

No default is written here: every value comes from config/model.py (and config/stores.py),
so the file a user starts from always says what blindkey does when a key is left out.
"""

from __future__ import annotations

import json

from blindkey.config.model import DEFAULT_POLICY, Settings
from blindkey.config.stores import DEFAULT_CACHE_TTL

COMMENT_COLUMN = 34


def toml_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f'"{int(seconds // size)}{unit}"'
    return f'"{round(seconds * 1000)}ms"'


def toml_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f'"{size // scale}{unit}"'
    return str(size)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def line(key: str, value: str, comment: str = "", *, commented: bool = False) -> str:
    text = f"{'# ' if commented else ''}{key} = {value}"
    return f"{text:<{COMMENT_COLUMN}}# {comment}" if comment else text


def render(defaults: Settings) -> str:
    proxy, limits, policy = defaults.proxy, defaults.limits, DEFAULT_POLICY
    duration, size, value = toml_duration, toml_size, toml_value
    lines = [
        "# blindkey configuration. `blindkey config check` validates this file;",
        "# `blindkey allowlist ...` and `blindkey secrets set ...` edit it for you.",
        "",
        "[proxy]",
        line("host", value(proxy.host), "a non-loopback address needs allow_remote = true"),
        line("port", value(proxy.port)),
        line(
            "allow_remote",
            value(proxy.allow_remote),
            "true: agent tokens always required, peers in allowed_peers only",
        ),
        line(
            "allowed_peers",
            value([str(n) for n in proxy.allowed_peers]),
            "CIDRs of remote callers when allow_remote = true",
        ),
        line(
            "require_agent_token",
            value(proxy.require_agent_token),
            'false: anonymous local callers act as agent "anonymous"',
        ),
        line("upstream_timeout", duration(proxy.upstream_timeout)),
        line("ca_file", value(proxy.ca_file), "extra CA bundle for upstream TLS"),
        "",
        "[limits]",
        line(
            "max_request_body",
            size(limits.max_request_body),
            "bodies that must be buffered (body/form injection)",
        ),
        line(
            "max_header_size",
            size(limits.max_header_size),
            "one request line or header field, from agents and upstreams",
        ),
        line("max_headers", value(limits.max_headers), "header fields per request"),
        line("max_connections", value(limits.max_connections), "agent connections open at once"),
        line(
            "header_read_timeout",
            duration(limits.header_read_timeout),
            "a client must send its headers within this (slowloris)",
        ),
        line(
            "keepalive_idle_timeout",
            duration(limits.keepalive_idle_timeout),
            "an idle keep-alive connection is closed after this; at the",
        ),
        f"{'':<{COMMENT_COLUMN}}# connection cap the idlest ones are closed first",
        line(
            "body_read_timeout",
            duration(limits.body_read_timeout),
            "a body buffered for Body-*/Form-* injection must arrive in this",
        ),
        line(
            "drain_timeout",
            duration(limits.drain_timeout),
            "on stop, calls in flight get this long; then they are cut",
        ),
        line("upstream_connect_timeout", duration(limits.upstream_connect_timeout)),
        line(
            "upstream_total_timeout",
            duration(limits.upstream_total_timeout),
            "whole exchange, streams included; upstream_timeout is per read",
        ),
        "",
        "[backend]",
        "# file: the encrypted vault next to this file; keyring: the OS keychain;",
        "# openbao: OpenBao or Vault KV v2 (with the keys shown under [remote] below)",
        line("kind", value(defaults.backend)),
        line(
            "cache_ttl",
            duration(DEFAULT_CACHE_TTL),
            "keyring, openbao: how long the broker keeps a value read",
        ),
        "",
        "# [remote]                        # a team store for `secrets push|pull|diff`",
        '# address = "https://bao.example.com:8200"',
        '# mount = "secret"                # KV v2 mount; values at <mount>/<prefix>/<env>/<NAME>',
        '# prefix = "blindkey"',
        '# namespace = ""',
        '# ca_file = ""',
        '# auth = "token"                  # token: token_file, else $BAO_TOKEN / $VAULT_TOKEN',
        '# token_file = ""                 # approle: role_id and secret_id_file',
        '# role_id = ""',
        '# secret_id_file = ""',
        "",
        "[environments]",
        line("names", value(defaults.environments)),
        line("active", value(defaults.active_env)),
        "",
        "[broker]",
        line(
            "socket",
            value(defaults.broker.socket),
            "set: connect to a broker run as its own service",
        ),
        line(
            "allowed_uids",
            value(list(defaults.broker.allowed_uids)),
            "users besides the broker's own that may connect",
        ),
        line(
            "release_uids",
            value(list(defaults.broker.release_uids)),
            "agents' users: env, exec and mcp only",
        ),
        "",
        "[audit]",
        line(
            "fsync",
            value(defaults.audit.fsync),
            "false: faster, but a crash may lose the last records",
        ),
        line("rotate_mb", value(defaults.audit.rotate_mb), "start a new file past this size"),
        line("keep_days", value(defaults.audit.keep_days), "delete rotated files older than this"),
        "",
        "[approvals]                       # how long a grant lasts (and the most --for asks)",
        line("controlled_ttl", duration(defaults.approvals.controlled_ttl)),
        line("restricted_ttl", duration(defaults.approvals.restricted_ttl)),
        line(
            "elevate_ttl",
            duration(defaults.approvals.elevate_ttl),
            "window opened by `sudo blindkey elevate CODE`",
        ),
        "",
        "[allowlist]",
        "# host (https:443), host:port (https), *.example.com, http://host[:port], https://host:port",
        line("hosts", value([entry.text for entry in defaults.allowlist.entries])),
        line(
            "private_ranges",
            value([str(n) for n in defaults.allowlist.private_ranges]),
            "CIDRs a resolved hostname may land in",
        ),
        "",
        "# [secrets.GITHUB_TOKEN]          # metadata only; values live in the backend",
        line("tier", value(policy.tier), "open | controlled | restricted", commented=True),
        line("hosts", '["api.github.com"]', "empty: any allowlisted host", commented=True),
        line("agents", value(policy.agents), commented=True),
        line(
            "release",
            value(policy.release),
            "channels that may hand out the value: proxy, env, exec",
            commented=True,
        ),
        line(
            "approvals", value(policy.approvals), "distinct approvers a grant needs", commented=True
        ),
        line(
            "allow_range",
            value(policy.allow_range),
            "true: Range and 206 answers (values can then be read in slices)",
            commented=True,
        ),
        "",
        "# [routes.openai]                 # /r/openai/... for SDKs given base_url (`route add`)",
        '# to = "https://api.openai.com"',
        '# inject = "bearer"               # bearer | basic | header | query',
        '# secret = "OPENAI_API_KEY"',
        '# name = ""                       # the header or query parameter, for header | query',
    ]
    return "\n".join(lines) + "\n"


DEFAULT_CONFIG = render(Settings())
