"""OAuth2 access tokens (RFC 6749): the refresh_token grant (the stored value is the refresh
token) and client_credentials (the stored value is the client secret, sent in Basic auth or
in the form)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from urllib.parse import quote

from blindkey.broker.credentials.http import TokenClient
from blindkey.broker.credentials.provider import Credential, Secret
from blindkey.broker.protocol import BrokerDenied

# A token endpoint that does not say how long its token lasts: ask again this often.
UNSTATED_LIFETIME = 300.0


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 2.3.1: both parts form-urlencoded before they are joined.
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


class OAuth2:
    def __init__(self, client: TokenClient, clock: Callable[[], float]) -> None:
        self.client = client
        self.clock = clock

    def _request(self, secret: Secret, material: str) -> tuple[dict[str, str], dict[str, str]]:
        policy = secret.policy
        form = {"grant_type": policy.grant}
        headers = {"Accept": "application/json"}
        if policy.grant == "refresh_token":
            form["refresh_token"] = material
            form["client_id"] = policy.client_id
        elif policy.client_auth == "basic":
            headers["Authorization"] = _basic(policy.client_id, material)
        else:
            form["client_id"] = policy.client_id
            form["client_secret"] = material
        if policy.scope:
            form["scope"] = policy.scope
        return form, headers

    async def issue(self, secret: Secret, material: str) -> Credential:
        policy = secret.policy
        if not policy.token_url or not policy.client_id:
            raise BrokerDenied(
                "secret_denied",
                f"secret {secret.name} is oauth2 but [secrets.{secret.name}] lacks token_url "
                "or client_id",
            )
        form, headers = self._request(secret, material)
        asked = self.clock()
        answer = await self.client.post(secret, policy.token_url, headers, form=form)
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise BrokerDenied(
                "upstream_error", f"token endpoint of {secret.name} answered with no access_token"
            )
        lifetime = answer.get("expires_in")
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = UNSTATED_LIFETIME
        rotated = answer.get("refresh_token") if policy.grant == "refresh_token" else None
        if not isinstance(rotated, str) or not rotated or rotated == material:
            rotated = None
        # From when it was asked: the token's clock started no later than that.
        return Credential(token, asked + float(lifetime), rotated)
