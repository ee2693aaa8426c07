"""`blindkey oauth login` end to end: the real command in a subprocess, a local authorisation
server (aiohttp on port 0) that checks what a provider checks (PKCE S256, the redirect URI,
single-use codes), and the browser step played by an HTTP client that opens the printed URL
and follows the redirect to blindkey's loopback listener. The refresh token lands in the
store as an oauth2 secret and in no output."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web

from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from tests.broker.credentials.helpers import everything_written, stored

CLIENT_ID = "login-client-for-tests"
REFRESH = "refresh-token-from-login-5b0c7e2f9a1d"
DEVICE_CODE = "device-code-8f3e1a"


@dataclass
class AuthServer:
    """/authorize answers with a redirect to the loopback listener (or, on request, an error
    or someone else's state); /token redeems a code once, for its PKCE verifier only."""

    url: str = ""
    answer: str = "code"  # "code", "deny", "foreign_state"
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    device_answers: list[str] = field(default_factory=list)  # errors before the token
    token_forms: list[dict[str, str]] = field(default_factory=list)

    async def authorize(self, request: web.Request) -> web.Response:
        query = request.query
        assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
        assert query["code_challenge_method"] == "S256"
        redirect = urlsplit(query["redirect_uri"])
        assert (redirect.scheme, redirect.hostname) == ("http", "127.0.0.1")  # RFC 8252 7.3
        state = query["state"]
        if self.answer == "deny":
            back = {"error": "access_denied", "error_description": "the user said no",
                    "state": state}  # fmt: skip
        else:
            code = secrets.token_urlsafe(16)
            self.codes[code] = dict(query)
            back = {"code": code, "state": state}
            if self.answer == "foreign_state":
                back["state"] = "a-state-this-login-never-made"
        raise web.HTTPFound(query["redirect_uri"] + "?" + urlencode(back))

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_forms.append(form)
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:device_code":
            if form.get("device_code") != DEVICE_CODE:
                return web.json_response({"error": "invalid_grant"}, status=400)
            if self.device_answers:
                return web.json_response({"error": self.device_answers.pop(0)}, status=400)
            return self._tokens()
        asked = self.codes.pop(form.get("code", ""), None)  # a code is good once
        if asked is None or form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "invalid_grant"}, status=400)
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        sent = (challenge, form.get("redirect_uri"), form.get("client_id"))
        if sent != (asked["code_challenge"], asked["redirect_uri"], CLIENT_ID):
            return web.json_response({"error": "invalid_grant"}, status=400)
        return self._tokens()

    def _tokens(self) -> web.Response:
        return web.json_response(
            {
                "access_token": "access-" + secrets.token_hex(8),
                "refresh_token": REFRESH,
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        )

    async def device(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["client_id"] == CLIENT_ID
        return web.json_response(
            {"device_code": DEVICE_CODE, "user_code": "WDJB-MJHT",
             "verification_uri": f"{self.url}/activate", "interval": 0, "expires_in": 60}
        )  # fmt: skip


@pytest.fixture
async def auth_server() -> AsyncIterator[AuthServer]:
    server = AuthServer()
    app = web.Application()
    app.router.add_get("/authorize", server.authorize)
    app.router.add_post("/token", server.token)
    app.router.add_post("/device", server.device)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


async def login(
    home: Paths, server: AuthServer, *extra: str
) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "oauth", "login", "DRIVE",
        "--token-url", f"{server.url}/token", "--client-id", CLIENT_ID, "--scope", "drive.file",
        *extra,
        env={**os.environ, "BLINDKEY_HOME": str(home.config_dir)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    return process, process.stderr


async def browser(stderr: asyncio.StreamReader) -> tuple[int, str, str]:
    """The person at the terminal: opens the URL blindkey printed; the browser follows the
    authorisation server's redirect to blindkey's listener. (status, final URL, said)."""
    said = line = ""
    while not line.startswith("http"):
        line = (await stderr.readline()).decode()
        assert line, f"blindkey printed no URL: {said}"
        said += line
    url = line.strip()
    async with aiohttp.ClientSession() as session, session.get(url) as page:
        return page.status, str(page.url), said + await page.text()


async def finished(process: asyncio.subprocess.Process, stderr: asyncio.StreamReader) -> str:
    assert process.stdout is not None
    out, rest = await asyncio.gather(process.stdout.read(), stderr.read())
    await process.wait()
    return out.decode() + rest.decode()


async def test_authorization_code_with_pkce_stores_the_refresh_token(
    home: Paths, auth_server: AuthServer
) -> None:
    process, stderr = await login(home, auth_server, "--auth-url",
                                  f"{auth_server.url}/authorize", "--no-browser")  # fmt: skip
    status, landed, said = await browser(stderr)
    assert status == 200 and "blindkey has the answer" in said
    assert urlsplit(landed).hostname == "127.0.0.1" and urlsplit(landed).path == "/callback"
    output = said + await finished(process, stderr)
    assert process.returncode == 0, output
    assert stored(home, "DRIVE") == REFRESH
    policy = load_settings(home.config_file).policy("DRIVE")
    assert (policy.kind, policy.grant, policy.token_url, policy.client_id, policy.scope) == (
        "oauth2", "refresh_token", f"{auth_server.url}/token", CLIENT_ID, "drive.file",
    )  # fmt: skip
    (form,) = auth_server.token_forms
    assert form["grant_type"] == "authorization_code" and len(form["code_verifier"]) >= 43
    assert REFRESH not in output and REFRESH.encode() not in everything_written(home)


async def test_a_foreign_state_is_refused_and_nothing_stored(
    home: Paths, auth_server: AuthServer
) -> None:
    """A page that calls the listener with a code of its own cannot plant it: its state
    is not this login's."""
    auth_server.answer = "foreign_state"
    process, stderr = await login(home, auth_server, "--auth-url",
                                  f"{auth_server.url}/authorize", "--no-browser")  # fmt: skip
    await browser(stderr)
    output = await finished(process, stderr)
    assert process.returncode == 1 and "did not carry this login's state" in output
    assert not auth_server.token_forms  # the code was never redeemed
    assert "DRIVE" not in load_settings(home.config_file).secrets


async def test_a_denial_is_said_and_nothing_stored(home: Paths, auth_server: AuthServer) -> None:
    auth_server.answer = "deny"
    process, stderr = await login(home, auth_server, "--auth-url",
                                  f"{auth_server.url}/authorize", "--no-browser")  # fmt: skip
    await browser(stderr)
    output = await finished(process, stderr)
    assert process.returncode == 1 and "access_denied: the user said no" in output
    assert "DRIVE" not in load_settings(home.config_file).secrets


async def test_device_flow_polls_until_allowed(home: Paths, auth_server: AuthServer) -> None:
    auth_server.device_answers = ["authorization_pending", "authorization_pending"]
    process, stderr = await login(home, auth_server, "--device-url", f"{auth_server.url}/device")
    output = await finished(process, stderr)
    assert process.returncode == 0, output
    assert "WDJB-MJHT" in output and f"{auth_server.url}/activate" in output
    assert len(auth_server.token_forms) == 3  # two pending answers, then the token
    assert stored(home, "DRIVE") == REFRESH and REFRESH not in output


def test_an_endpoint_in_clear_over_a_network_is_refused(home: Paths) -> None:
    from blindkey.broker.credentials.login import LoginError, check_endpoint

    assert check_endpoint("--token-url", "http://127.0.0.1:9/token")
    assert check_endpoint("--token-url", "https://oauth2.example.com/token")
    for url in ("http://oauth2.example.com/token", "ftp://x/token", "https:///token"):
        with pytest.raises(LoginError):
            check_endpoint("--token-url", url)
