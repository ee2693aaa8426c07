"""`[secrets.NAME]`: a secret's policy, each key declared once (config/fields.py). What the
value is (its kind), where it may go, who may use it, which calls may carry it, and how a
program in proxy mode names it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from blindkey.config.fields import setting
from blindkey.config.hosts import AllowEntry
from blindkey.config.request_rules import METHODS, PATH_GLOBS, RATE, Rate
from blindkey.config.values import (
    BOOL,
    POSITIVE,
    STRINGS,
    Kind,
    choice,
    one_of,
    string_list,
    text,
    toml_value,
)

TIERS = ("open", "controlled", "restricted")
RELEASE_CHANNELS = ("proxy", "env", "exec")
# What a secret's stored value is: the value injected, the material a token is minted from,
# or keys that sign.
SECRET_KINDS = ("value", "oauth2", "github-app", "aws")
OAUTH2_GRANTS = ("refresh_token", "client_credentials")

# A placeholder's prefix stands in headers, URLs and JSON as it is: nothing that needs
# escaping in any of them, and short.
_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{0,32}\Z")


def _placeholder_prefix(value: object) -> str:
    if not isinstance(value, str) or not _PREFIX.match(value):
        raise ValueError(f"expected up to 32 letters, digits, _ . or -, got {value!r}")
    return value


PLACEHOLDER_PREFIX = Kind(_placeholder_prefix, toml_value, "string (letters, digits, _ . -)")


def _binding_text(entry: AllowEntry) -> str:
    return entry.text


@dataclass(frozen=True)
class SecretPolicy:
    tier: str = setting(
        choice(TIERS),
        "open",
        "open | controlled | restricted",
        doc="open: used without a grant; controlled, restricted: only under a grant a human "
        "approved with a TOTP code (lasting [approvals] controlled_ttl, restricted_ttl)",
    )
    # Where the value may go: allowlist entries (scheme, host pattern and port, exactly).
    hosts: tuple[AllowEntry, ...] = setting(
        string_list(AllowEntry.binding, _binding_text, "list of allowlist entries"),
        (),
        "empty: any allowlisted host",
        example=["api.github.com"],
    )
    agents: tuple[str, ...] = setting(
        STRINGS, ("*",), doc='agents that may use the secret (`"*"`: every agent)'
    )
    release: tuple[str, ...] = setting(
        string_list(one_of(RELEASE_CHANNELS), name="list of: `proxy`, `env`, `exec`"),
        ("proxy",),
        "channels that may hand out the value: proxy, env, exec",
    )
    # Stored with --allow-short: too short to redact reliably, so every use is audited as such.
    allow_short: bool = setting(
        BOOL, False, "set by `secrets set --allow-short`: too short to redact reliably"
    )
    # Distinct approvers whose codes a grant of this secret needs (controlled, restricted).
    approvals: int = setting(POSITIVE, 1, "distinct approvers a grant needs")
    # Calls that inject this secret may send Range/If-Range and get a 206 back. Off, both
    # are stripped and a 206 refused: a part of an answer can be a slice of a stored value
    # too short for the redactor to recognise, read back piece by piece.
    allow_range: bool = setting(
        BOOL, False, "true: Range and 206 answers (values can then be read in slices)"
    )
    # Policy per request (broker/rules.py): what a call that injects this secret may do.
    methods: tuple[str, ...] = setting(METHODS, (), "empty: any method", example=["GET"])
    paths: tuple[str, ...] = setting(
        PATH_GLOBS, (), "globs on the path; empty: any path", example=["/repos/acme/*", "/user"]
    )
    rate: Rate | None = setting(  # noqa: RUF009 - Rate is frozen, shared safely
        RATE, None, "per agent using this secret", example="120/min"
    )

    # What a program's key check expects before blindkey's placeholder (`sk-`, `ghp_`).
    placeholder_prefix: str = setting(
        PLACEHOLDER_PREFIX, "", 'proxy mode: the placeholder starts with this (e.g. "sk-")'
    )

    # Computed credentials: the stored value (refresh token, client secret, private key, AWS
    # keys) never leaves the broker; what is injected is minted or signed from it.
    kind: str = setting(
        choice(SECRET_KINDS), "value", "value | oauth2 | github-app | aws",
        doc="value: injected as stored; oauth2, github-app: the stored value (refresh token, "
        "client secret, private key) mints the access token injected, by the proxy only; "
        "aws: the stored keys sign requests (X-AS-Inject-Sigv4) and are never sent",
    )  # fmt: skip
    # aws: the region signed for when neither the host nor X-AS-Sigv4-Region names one.
    region: str = setting(text(), "", 'aws: default region (empty: "us-east-1")')
    # aws with a role: the stored keys only ask STS for the role's temporary keys, which sign.
    role_arn: str = setting(text(), "", "aws: the role assumed with the stored keys (STS)")
    sts_url: str = setting(
        text(), "", "aws: the STS endpoint (allowlisted; empty: sts.REGION.amazonaws.com)"
    )
    token_url: str = setting(text(), "", "oauth2: the token endpoint (allowlisted)")
    client_id: str = setting(text(), "", "oauth2: the client id")
    scope: str = setting(text(), "", "oauth2: the scope asked for")
    grant: str = setting(choice(OAUTH2_GRANTS), "refresh_token", "oauth2: or client_credentials")
    client_auth: str = setting(
        choice(("basic", "post")), "basic", "oauth2: client secret in Basic auth, or the form"
    )
    app_id: str = setting(text(), "", "github-app: the app's id")
    installation_id: str = setting(text(), "", "github-app: the installation acted as")
    api_url: str = setting(
        text(), "https://api.github.com", "github-app: where installation tokens come from"
    )

    def allows_agent(self, agent: str) -> bool:
        return "*" in self.agents or agent in self.agents

    def allows_host(self, scheme: str, host: str, port: int) -> bool:
        return not self.hosts or any(entry.matches(scheme, host, port) for entry in self.hosts)


DEFAULT_POLICY = SecretPolicy()  # a secret without a [secrets.NAME] table
