"""GitHub App installation tokens: an RS256 JWT signed with the app's private key (the
stored value) buys a token from POST /app/installations/ID/access_tokens."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from blindkey.broker.credentials.http import TokenClient
from blindkey.broker.credentials.provider import Credential, Secret
from blindkey.broker.protocol import BrokerDenied

# GitHub refuses a JWT that lives longer than 10 minutes; iat a minute back allows for skew.
JWT_LIFETIME = 540
CLOCK_SKEW = 60
API_VERSION = "2022-11-28"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def app_jwt(key: rsa.RSAPrivateKey, app_id: str, now: float) -> str:
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = {"iat": int(now) - CLOCK_SKEW, "exp": int(now) + JWT_LIFETIME, "iss": app_id}
    signed = f"{header}.{_b64(json.dumps(claims).encode())}"
    signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{_b64(signature)}"


def _private_key(secret: Secret, material: str) -> rsa.RSAPrivateKey:
    try:
        key = load_pem_private_key(material.encode(), password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        # Never the parser's message: it could quote the material.
        raise BrokerDenied(
            "secret_denied", f"the stored value of {secret.name} is not an RSA private key (PEM)"
        )
    return key


class GitHubApp:
    def __init__(self, client: TokenClient, clock: Callable[[], float]) -> None:
        self.client = client
        self.clock = clock

    async def issue(self, secret: Secret, material: str) -> Credential:
        policy = secret.policy
        if not policy.app_id or not policy.installation_id:
            raise BrokerDenied(
                "secret_denied",
                f"secret {secret.name} is github-app but [secrets.{secret.name}] lacks app_id "
                "or installation_id",
            )
        # The JWT's times are GitHub's to check: the wall clock, not the broker's.
        jwt = app_jwt(_private_key(secret, material), policy.app_id, time.time())
        url = f"{policy.api_url.rstrip('/')}/app/installations/{policy.installation_id}"
        headers = {
            "Authorization": f"Bearer {jwt}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        }
        asked, wall = self.clock(), time.time()
        answer = await self.client.post(secret, f"{url}/access_tokens", headers)
        token, expires = answer.get("token"), answer.get("expires_at")
        if not isinstance(token, str) or not token:
            raise BrokerDenied("upstream_error", f"GitHub answered {secret.name} with no token")
        try:
            lifetime = datetime.fromisoformat(str(expires)).timestamp() - wall
        except ValueError:
            lifetime = 3600.0  # what GitHub grants
        return Credential(token, asked + max(lifetime, 0.0))
