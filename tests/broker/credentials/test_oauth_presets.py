"""`oauth login --preset github|google|microsoft`: the endpoints, scopes and API host of the
preset, flags winning over it; and the command itself sends the browser to the preset's
authorisation endpoint (read from what it prints; nothing leaves this machine)."""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import parse_qs, urlsplit

import pytest

from blindkey.broker.credentials.presets import PRESETS, endpoints
from blindkey.config.errors import UsageError
from blindkey.config.paths import Paths


@pytest.mark.parametrize(
    ("preset", "auth", "token", "device", "scope", "host"),
    [
        ("github", "https://github.com/login/oauth/authorize",
         "https://github.com/login/oauth/access_token", "https://github.com/login/device/code",
         "repo read:user", "api.github.com"),
        ("google", "https://accounts.google.com/o/oauth2/v2/auth?access_type=offline&prompt=consent",
         "https://oauth2.googleapis.com/token", "https://oauth2.googleapis.com/device/code",
         "openid email profile", "www.googleapis.com"),
        ("microsoft", "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
         "https://login.microsoftonline.com/common/oauth2/v2.0/token",
         "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
         "offline_access User.Read", "graph.microsoft.com"),
    ],
)  # fmt: skip
def test_a_preset_fills_its_endpoints(
    preset: str, auth: str, token: str, device: str, scope: str, host: str
) -> None:
    browser = endpoints(preset, auth_url=None, token_url=None, device_url=None, scope=None,
                        hosts=[], device=False)  # fmt: skip
    assert (browser.auth_url, browser.token_url, browser.device_url) == (auth, token, "")
    assert browser.scope == scope and browser.hosts == (host,)
    code = endpoints(preset, auth_url=None, token_url=None, device_url=None, scope=None,
                     hosts=[], device=True)  # fmt: skip
    assert code.device_url == device


def test_flags_win_over_a_preset_and_are_needed_without_one() -> None:
    tenant = "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token"
    given = endpoints("microsoft", auth_url=None, token_url=tenant, device_url=None,
                      scope="", hosts=["graph.microsoft.us"], device=False)  # fmt: skip
    assert (
        given.token_url == tenant and given.scope == "" and given.hosts == ("graph.microsoft.us",)
    )
    assert given.auth_url == PRESETS["microsoft"].auth_url
    with pytest.raises(UsageError, match="one of github, google, microsoft"):
        endpoints("gitlab", auth_url=None, token_url=None, device_url=None, scope=None,
                  hosts=[], device=False)  # fmt: skip
    with pytest.raises(UsageError, match="--token-url"):
        endpoints(None, auth_url="https://a.example/auth", token_url=None, device_url=None,
                  scope=None, hosts=[], device=False)  # fmt: skip
    with pytest.raises(UsageError, match="--device takes a --preset"):
        endpoints(None, auth_url=None, token_url="https://a.example/token", device_url=None,
                  scope=None, hosts=[], device=True)  # fmt: skip


async def test_login_with_a_preset_opens_its_authorisation_endpoint(home: Paths) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "oauth", "login", "GOOGLE", "--preset", "google",
        "--client-id", "app.apps.googleusercontent.com", "--no-browser",
        env={**os.environ, "BLINDKEY_HOME": str(home.config_dir)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        line = ""
        while not line.startswith("https://"):
            raw = await asyncio.wait_for(process.stderr.readline(), 20)
            assert raw, "oauth login printed no URL"
            line = raw.decode().strip()
    finally:
        process.terminate()
        await process.wait()
    url = urlsplit(line)
    assert (
        f"{url.scheme}://{url.netloc}{url.path}" == "https://accounts.google.com/o/oauth2/v2/auth"
    )
    query = parse_qs(url.query)
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert query["scope"] == ["openid email profile"]
    assert query["client_id"] == ["app.apps.googleusercontent.com"]
    assert query["code_challenge_method"] == ["S256"]
    assert urlsplit(query["redirect_uri"][0]).hostname == "127.0.0.1"
