"""github-app secrets: a local server acting as GitHub's API verifies the app's RS256 JWT
with the app's public key before it issues an installation token."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from blindkey.broker.protocol import BrokerDenied
from blindkey.config.paths import Paths
from tests.broker.conftest import Brokers
from tests.broker.credentials.helpers import configure, everything_written, resolve, store

APP_ID, INSTALLATION = "424242", "777"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class GitHub:
    key: rsa.RSAPrivateKey
    base: str = ""
    issued: list[str] = field(default_factory=list)
    claims: list[dict[str, object]] = field(default_factory=list)

    @property
    def pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    async def access_tokens(self, request: web.Request) -> web.Response:
        jwt = request.headers.get("Authorization", "").removeprefix("Bearer ")
        header, claims, signature = jwt.split(".")
        try:
            self.key.public_key().verify(
                _unb64(signature),
                f"{header}.{claims}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return web.json_response(
                {"message": "A JSON web token could not be decoded"}, status=401
            )
        assert json.loads(_unb64(header)) == {"alg": "RS256", "typ": "JWT"}
        decoded = json.loads(_unb64(claims))
        self.claims.append(decoded)
        if request.match_info["installation"] != INSTALLATION or decoded["iss"] != APP_ID:
            return web.json_response({"message": "Not Found"}, status=404)
        token = f"ghs_{secrets.token_hex(18)}"
        self.issued.append(token)
        expires = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
        return web.json_response({"token": token, "expires_at": expires}, status=201)


@pytest.fixture
async def github() -> AsyncIterator[GitHub]:
    server = GitHub(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    app = web.Application()
    app.router.add_post(
        "/api/v3/app/installations/{installation}/access_tokens", server.access_tokens
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


def app_secret(api: str, installation: str = INSTALLATION) -> str:
    return (
        f'\n[secrets.GH_APP]\nkind = "github-app"\napp_id = "{APP_ID}"\n'
        f'installation_id = "{installation}"\napi_url = "{api}/api/v3"\n'
    )


async def test_installation_token_for_a_verified_jwt(
    home: Paths, brokers: Brokers, github: GitHub
) -> None:
    agent = configure(home, app_secret(github.base), [github.base])
    store(home, GH_APP=github.pem)
    server = await brokers.start(home)
    client = brokers.client(server)
    reply = await resolve(client, agent, "GH_APP")
    assert reply["values"] == {"GH_APP": github.issued[0]}
    (claims,) = github.claims
    assert 0 < int(str(claims["exp"])) - int(str(claims["iat"])) <= 600
    # Kept: a second call costs no JWT and no token.
    assert (await resolve(client, agent, "GH_APP"))["values"] == reply["values"]
    assert len(github.claims) == 1
    redaction = await client.call("redaction_set")
    assert redaction["values"]["GH_APP"] == github.issued[0]
    pem_line = github.pem.splitlines()[1].encode()
    assert pem_line not in everything_written(home) + json.dumps([reply, redaction]).encode()


async def test_wrong_installation_is_a_clear_error(
    home: Paths, brokers: Brokers, github: GitHub
) -> None:
    agent = configure(home, app_secret(github.base, "999"), [github.base])
    store(home, GH_APP=github.pem)
    server = await brokers.start(home)
    with pytest.raises(BrokerDenied) as refused:
        await resolve(brokers.client(server), agent, "GH_APP")
    assert refused.value.code == "upstream_error"
    assert "token endpoint 127.0.0.1 of GH_APP answered 404" in str(refused.value)


async def test_a_value_that_is_not_a_key_is_refused(
    home: Paths, brokers: Brokers, github: GitHub
) -> None:
    agent = configure(home, app_secret(github.base), [github.base])
    store(home, GH_APP="-----BEGIN PRIVATE KEY-----\nnot-a-key-at-all\n-----END PRIVATE KEY-----")
    server = await brokers.start(home)
    with pytest.raises(BrokerDenied) as refused:
        await resolve(brokers.client(server), agent, "GH_APP")
    assert "not an RSA private key" in str(refused.value)
    assert "not-a-key-at-all" not in str(refused.value)
    assert github.claims == []
