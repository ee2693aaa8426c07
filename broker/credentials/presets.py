"""`oauth login --preset`: the endpoints and default scopes of the authorisation servers
agents most often need, so a user types a client id and not three URLs. A flag given
beside a preset wins over it (another Microsoft tenant: --auth-url and --token-url)."""

from __future__ import annotations

from dataclasses import dataclass

from blindkey.config.errors import UsageError


@dataclass(frozen=True)
class Preset:
    auth_url: str
    token_url: str
    device_url: str
    scope: str
    hosts: tuple[str, ...]  # the APIs its tokens are for: the secret's hosts unless given


PRESETS = {
    # A GitHub App's user tokens expire and come with a refresh token (an OAuth App's do
    # not); GitHub takes PKCE and answers JSON to the Accept header login.py sends.
    "github": Preset(
        "https://github.com/login/oauth/authorize",
        "https://github.com/login/oauth/access_token",
        "https://github.com/login/device/code",
        "repo read:user",
        ("api.github.com",),
    ),
    # Google gives a refresh token only to access_type=offline, and again on a later login
    # only with prompt=consent.
    "google": Preset(
        "https://accounts.google.com/o/oauth2/v2/auth?access_type=offline&prompt=consent",
        "https://oauth2.googleapis.com/token",
        "https://oauth2.googleapis.com/device/code",
        "openid email profile",
        ("www.googleapis.com",),
    ),
    # Microsoft identity platform, any tenant; offline_access is what yields a refresh token.
    "microsoft": Preset(
        "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
        "offline_access User.Read",
        ("graph.microsoft.com",),
    ),
}


@dataclass(frozen=True)
class Endpoints:
    auth_url: str
    token_url: str
    device_url: str  # "": the browser flow
    scope: str
    hosts: tuple[str, ...]


def endpoints(
    preset: str | None,
    *,
    auth_url: str | None,
    token_url: str | None,
    device_url: str | None,
    scope: str | None,
    hosts: list[str],
    device: bool,
) -> Endpoints:
    """What `oauth login` logs in with: the flags, and where one is missing the preset's.
    `device`: the preset's device endpoint (the device flow) instead of the browser."""
    if preset and preset not in PRESETS:
        raise UsageError(f"--preset {preset}: one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else None
    if base is None:
        if device:
            raise UsageError("--device takes a --preset's device endpoint; else give --device-url")
        if not token_url:
            raise UsageError("oauth login needs --token-url (or a --preset)")
        if not auth_url and not device_url:
            raise UsageError("oauth login needs --auth-url (a browser) or --device-url (a code)")
        return Endpoints(auth_url or "", token_url, device_url or "", scope or "", tuple(hosts))
    return Endpoints(
        auth_url or base.auth_url,
        token_url or base.token_url,
        device_url or (base.device_url if device else ""),
        base.scope if scope is None else scope,
        tuple(hosts) or base.hosts,
    )
