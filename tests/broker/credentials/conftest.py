"""A local OAuth2 token endpoint (real HTTP on port 0) that checks what it is sent the way a
provider does: client authentication, refresh tokens rotated on every use (the old one
refused), and faults on request (an error, garbage, an answer held until released)."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import pytest
from aiohttp import web

CLIENT_ID = "client-id-for-tests"
CLIENT_SECRET = "client-secret-f3a9c1e7b2d4"
FIRST_REFRESH = "refresh-token-0-7d1e9b3a5c"


@dataclass
class TokenServer:
    url: str = ""
    port: int = 0
    lifetime: int = 3600
    rotate: bool = True
    fault: str = ""  # "400", "garbage", "hold"
    refresh_tokens: set[str] = field(default_factory=lambda: {FIRST_REFRESH})
    issued: list[str] = field(default_factory=list)  # access tokens, in order
    forms: list[dict[str, str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def newest_refresh(self) -> str:
        (token,) = self.refresh_tokens
        return token

    def _client(self, request: web.Request, form: dict[str, str]) -> tuple[str, str]:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return unquote(user), unquote(password)
        return form.get("client_id", ""), form.get("client_secret", "")

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        if self.fault == "hold":
            await self.release.wait()
        if self.fault == "400":
            return web.json_response({"error": "invalid_grant"}, status=400)
        if self.fault == "garbage":
            return web.Response(body=b"<html>surprise</html>")
        client_id, client_secret = self._client(request, form)
        answer: dict[str, object] = {"token_type": "Bearer", "expires_in": self.lifetime}
        if form.get("grant_type") == "client_credentials":
            if (client_id, client_secret) != (CLIENT_ID, CLIENT_SECRET):
                return web.json_response({"error": "invalid_client"}, status=401)
        elif form.get("grant_type") == "refresh_token" and client_id == CLIENT_ID:
            used = form.get("refresh_token", "")
            if used not in self.refresh_tokens:
                self.refused.append(used)
                return web.json_response({"error": "invalid_grant"}, status=400)
            if self.rotate:
                self.refresh_tokens = {
                    f"refresh-token-{len(self.issued) + 1}-{secrets.token_hex(8)}"
                }
                answer["refresh_token"] = self.newest_refresh()
        else:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        access = f"access-{len(self.issued)}-{secrets.token_hex(12)}"
        self.issued.append(access)
        answer["access_token"] = access
        return web.json_response(answer)


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    server = TokenServer()
    app = web.Application()
    app.router.add_post("/token", server.token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{server.port}/token"
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()
