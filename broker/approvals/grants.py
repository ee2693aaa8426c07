"""Grants (one secret, one environment, every agent or one, for a limited time, from N
distinct approvers) and tier floors, as plain records of the approvals file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from blindkey.audit.record import rfc3339
from blindkey.config.hosts import origin
from blindkey.config.model import SecretPolicy

RANK = {"open": 0, "controlled": 1, "restricted": 2}
# What a grant approved from a request covers: that request's scheme, host and port. A
# grant without one (`approve SECRET`) covers every destination the secret may reach.
Scope = tuple[str, str, int]
# A grant still waiting for more approvers is dropped after this long.
PARTIAL_TTL = 600.0
Grant = dict[str, Any]
_NONE = ("open", 1)


def new_grant(
    secret: str, env: str, agent: str, scope: Scope | None, needed: int, span: float, now: float
) -> Grant:
    return {
        "id": f"g_{os.urandom(6).hex()}",
        "secret": secret,
        "env": env,
        "agent": agent,
        "scope": list(scope) if scope is not None else None,
        "created": now,
        "expires": now + PARTIAL_TTL,
        "span": span,
        "approvers": [],
        "needed": needed,
    }


def complete(grant: Grant) -> bool:
    return len(grant["approvers"]) >= int(grant["needed"])


def alive(grant: Grant, now: float) -> bool:
    return float(grant["expires"]) > now


def drop_expired(grants: list[Grant], now: float) -> list[Grant]:
    gone = [g for g in grants if not alive(g, now)]
    for grant in gone:
        grants.remove(grant)
    return gone


def scope_of(grant: Grant) -> Scope | None:
    scope = grant.get("scope")
    if not scope:
        return None
    scheme, host, port = scope
    return str(scheme), str(host), int(port)


def grant_key(grant: Grant) -> tuple[str, str, str, Scope | None]:
    return grant["secret"], grant["env"], grant["agent"], scope_of(grant)


def find_grant(
    grants: list[Grant], secret: str, env: str, agent: str, scope: Scope | None
) -> Grant | None:
    """The grant of (secret, env, agent, scope) still waiting for approvers, if any."""
    for grant in grants:
        if grant_key(grant) == (secret, env, agent, scope) and not complete(grant):
            return grant
    return None


def covers_text(scope: Scope | None) -> str:
    return "*" if scope is None else origin(*scope)


class GrantIndex:
    """Complete grants by (secret, env), for the broker's resolve: a dict lookup per name."""

    __slots__ = ("_by_secret", "_next_expiry")

    def __init__(self) -> None:
        self._by_secret: dict[tuple[str, str], list[tuple[str, float, Scope | None]]] = {}
        self._next_expiry = float("inf")

    @classmethod
    def of(cls, grants: list[Grant]) -> GrantIndex:
        index = cls()
        for grant in grants:
            expires = float(grant["expires"])
            index._next_expiry = min(index._next_expiry, expires)
            if complete(grant):
                key = (str(grant["secret"]), str(grant["env"]))
                entry = (str(grant["agent"]), expires, scope_of(grant))
                index._by_secret.setdefault(key, []).append(entry)
        return index

    def covers(self, secret: str, env: str, agent: str, now: float, target: Scope | None) -> bool:
        """`target`: where the value would go (None: out of the proxy, to env or exec,
        which only a grant for every destination covers)."""
        for whom, expires, scope in self._by_secret.get((secret, env), ()):
            mine = whom == "*" or whom == agent
            if mine and expires > now and (scope is None or scope == target):
                return True
        return False

    def expired(self, now: float) -> bool:
        return self._next_expiry <= now


class Floors:
    """The lowest tier and approvals count each secret may be served with, once approvers
    exist: raised by config.toml, lowered only with an approver's code."""

    def __init__(self, floors: dict[str, Any], guarded: bool) -> None:
        self.floors = floors
        self.guarded = guarded

    def raised(self, name: str) -> bool:
        """Whether `name` may be served above its config.toml tier."""
        return self.guarded and name in self.floors

    def _floor(self, name: str) -> tuple[str, int]:
        floor = self.floors.get(name)
        if not isinstance(floor, dict):
            return _NONE
        return str(floor.get("tier", "open")), int(floor.get("approvals", 1))

    def effective(self, name: str, policy: SecretPolicy) -> tuple[str, int]:
        if not self.guarded:
            return policy.tier, policy.approvals
        tier, needed = self._floor(name)
        if RANK.get(policy.tier, 2) > RANK.get(tier, 2):
            tier = policy.tier
        return tier, max(needed, policy.approvals)

    def _wanted(self, name: str, policy: SecretPolicy) -> tuple[str, int]:
        if self.guarded:
            return self.effective(name, policy)
        return policy.tier, policy.approvals

    def follows(self, secrets: Mapping[str, SecretPolicy]) -> bool:
        """True when follow() would change nothing."""
        for name, policy in secrets.items():
            if self._wanted(name, policy) != self._floor(name):
                return False
        return self.guarded or all(name in secrets for name in self.floors)

    def follow(self, secrets: Mapping[str, SecretPolicy]) -> None:
        wanted = {name: self._wanted(name, policy) for name, policy in secrets.items()}
        if not self.guarded:
            self.floors.clear()
        for name, (tier, needed) in wanted.items():
            if (tier, needed) == _NONE:
                self.floors.pop(name, None)
            else:
                self.floors[name] = {"tier": tier, "approvals": needed}


def public_grant(grant: dict[str, Any]) -> dict[str, Any]:
    return {
        "secret": grant["secret"],
        "env": grant["env"],
        "agent": grant["agent"],
        "expires": rfc3339(float(grant["expires"])),
        "approvers": list(grant["approvers"]),
        "needed": int(grant["needed"]),
        "covers": covers_text(scope_of(grant)),
    }


def span_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
