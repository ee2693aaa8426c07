"""Grants (one secret, one environment, every agent or one, for a limited time, from N
distinct approvers) and tier floors, over the typed records of the approvals file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from blindkey.audit.record import rfc3339
from blindkey.broker.approvals.model import RANK, Floor, Grant, Scope
from blindkey.config.hosts import origin
from blindkey.config.secrets_table import SecretPolicy

# A grant still waiting for more approvers is dropped after this long.
PARTIAL_TTL = 600.0
_NONE = Floor("open", 1)


def new_grant(
    secret: str, env: str, agent: str, scope: Scope | None, needed: int, span: float, now: float
) -> Grant:
    return Grant(
        id=f"g_{os.urandom(6).hex()}",
        secret=secret,
        env=env,
        agent=agent,
        scope=scope,
        created=now,
        expires=now + PARTIAL_TTL,
        span=span,
        approvers=(),
        needed=needed,
    )


def drop_expired(grants: list[Grant], now: float) -> list[Grant]:
    gone = [g for g in grants if not g.alive(now)]
    for grant in gone:
        grants.remove(grant)
    return gone


def find_grant(
    grants: list[Grant], secret: str, env: str, agent: str, scope: Scope | None
) -> Grant | None:
    """The grant of (secret, env, agent, scope) still waiting for approvers, if any."""
    for grant in grants:
        if grant.key == (secret, env, agent, scope) and not grant.complete:
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
            index._next_expiry = min(index._next_expiry, grant.expires)
            if grant.complete:
                entry = (grant.agent, grant.expires, grant.scope)
                index._by_secret.setdefault((grant.secret, grant.env), []).append(entry)
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

    def __init__(self, floors: dict[str, Floor], guarded: bool) -> None:
        self.floors = floors
        self.guarded = guarded

    def raised(self, name: str) -> bool:
        """Whether `name` may be served above its config.toml tier."""
        return self.guarded and name in self.floors

    def _floor(self, name: str) -> Floor:
        return self.floors.get(name, _NONE)

    def effective(self, name: str, policy: SecretPolicy) -> tuple[str, int]:
        if not self.guarded:
            return policy.tier, policy.approvals
        floor = self._floor(name)
        tier, needed = floor.tier, floor.approvals
        if RANK.get(policy.tier, 2) > RANK.get(tier, 2):
            tier = policy.tier
        return tier, max(needed, policy.approvals)

    def _wanted(self, name: str, policy: SecretPolicy) -> Floor:
        if self.guarded:
            return Floor(*self.effective(name, policy))
        return Floor(policy.tier, policy.approvals)

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
        for name, floor in wanted.items():
            if floor == _NONE:
                self.floors.pop(name, None)
            else:
                self.floors[name] = floor


def public_grant(grant: Grant) -> dict[str, Any]:
    return {
        "secret": grant.secret,
        "env": grant.env,
        "agent": grant.agent,
        "expires": rfc3339(grant.expires),
        "approvers": list(grant.approvers),
        "needed": grant.needed,
        "covers": covers_text(grant.scope),
    }


def span_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
