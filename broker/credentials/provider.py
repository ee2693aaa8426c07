"""One interface for every kind of secret: given the stored material, what to inject now and
until when. A signer (HMAC, SigV4) is one more provider; the proxy never learns the kind."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from blindkey.config.secrets_table import SecretPolicy


@dataclass(frozen=True)
class Secret:
    """One secret as its provider sees it: where it lives, its policy and its material."""

    env: str
    name: str
    policy: SecretPolicy
    material: str


@dataclass(frozen=True)
class Credential:
    """What is injected, until when (the provider's clock; inf: for as long as it is
    stored), and the material to keep using when the issuer rotated it (None: unchanged)."""

    value: str
    until: float = math.inf
    rotated: str | None = None


class Provider(Protocol):
    async def issue(self, secret: Secret, material: str) -> Credential:
        """Mint a credential from `material` (the newest: a rotated one once rotated).
        Raises BrokerDenied with the code and message the agent should see."""
        ...


class PlainValue:
    """The stored value is what is injected: nothing to mint, nothing expires."""

    async def issue(self, secret: Secret, material: str) -> Credential:
        return Credential(material)
