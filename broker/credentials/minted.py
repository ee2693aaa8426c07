"""The broker's minted credentials: kept until RENEW_BEFORE seconds before they expire, one
fetch per secret at a time, a rotated refresh token stored before the token it came with is
used, and only minted tokens (never the material) in what the proxy may redact with."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from blindkey.audit.events import append_event
from blindkey.broker.cache import ValueView
from blindkey.broker.credentials.assume_role import AssumeRole
from blindkey.broker.credentials.github_app import GitHubApp
from blindkey.broker.credentials.http import TokenClient
from blindkey.broker.credentials.oauth2 import OAuth2
from blindkey.broker.credentials.provider import Credential, PlainValue, Provider, Secret
from blindkey.broker.protocol import BrokerDenied
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import Settings
from blindkey.config.paths import Paths

log = logging.getLogger("blindkey.broker")
RENEW_BEFORE = 60.0
Key = tuple[str, str]  # env, name


class Source(Protocol):
    """What credentials need of the broker's state (BrokerState)."""

    settings: Settings
    view: ValueView | None
    paths: Paths


@dataclass
class _Material:
    """What a rotating issuer made of the stored value: the newest, and what it replaced
    (the store may still show an older one until the broker re-reads it)."""

    newest: str
    superseded: set[str] = field(default_factory=set)


MINTED_KINDS = ("oauth2", "github-app")


class Credentials:
    def __init__(
        self, state: Source, clock: Callable[[], float], changed: Callable[[], None]
    ) -> None:
        self.state = state
        self.changed = changed  # what is served changed: the proxies re-read it
        self.clock = clock
        client = TokenClient(lambda: state.settings, self._audit)
        self.providers: dict[str, Provider] = {
            "value": PlainValue(),
            "oauth2": OAuth2(client, self.now),
            "github-app": GitHubApp(client, self.now),
            "aws": AssumeRole(client, self.now),  # aws with a role_arn only (computed)
        }
        # Each token with the material it came from and when it is renewed.
        self._minted: dict[Key, tuple[str, Credential, float]] = {}
        self._spent: dict[Key, str] = {}  # the last token that expired: still redacted
        self._materials: dict[Key, _Material] = {}
        self._flights: dict[Key, asyncio.Future[Credential]] = {}

    def now(self) -> float:
        return self.clock()  # looked up per call: a test may replace the clock

    def computed(self, name: str) -> bool:
        """A secret whose injected value is minted here: not aws keys, which sign in the
        proxy (and are redacted part by part), unless they only assume a role."""
        policy = self.state.settings.policy(name)
        return policy.kind in MINTED_KINDS or (policy.kind == "aws" and bool(policy.role_arn))

    def _material(self, key: Key, stored: str) -> str:
        known = self._materials.get(key)
        if known is None:
            return stored
        if stored == known.newest or stored in known.superseded:
            return known.newest
        del self._materials[key]  # a human stored a new one
        return stored

    def _current(self, key: Key, stored: str) -> str | None:
        kept = self._minted.get(key)
        if kept is None or kept[0] != self._material(key, stored):
            return None
        return kept[1].value if self.clock() < kept[2] else None

    def substitute(
        self, env: str, values: dict[str, str]
    ) -> tuple[dict[str, str], tuple[str, ...]]:
        """The values to inject, and the names whose credential must be minted first."""
        pending = []
        for name, stored in values.items():
            if self.computed(name):
                token = self._current((env, name), stored)
                if token is None:
                    pending.append(name)
                else:
                    values[name] = token
        return (values, ()) if not pending else ({}, tuple(pending))

    async def mint(self, env: str, names: Iterable[str]) -> None:
        """Mint what `names` need now; raises BrokerDenied (the agent's error) on failure."""
        view = self.state.view
        for name in dict.fromkeys(names):
            stored = None if view is None else view.lookup(env, name)
            if not isinstance(stored, str) or not self.computed(name):
                continue
            key = (env, name)
            if self._current(key, stored) is not None:
                continue
            flight = self._flights.get(key)
            if flight is None:
                flight = asyncio.ensure_future(self._issue(key, stored))
                self._flights[key] = flight
                flight.add_done_callback(functools.partial(self._landed, key))
            await asyncio.shield(flight)

    def _landed(self, key: Key, flight: asyncio.Future[Credential]) -> None:
        self._flights.pop(key, None)
        if not flight.cancelled():
            flight.exception()  # retrieved: a failure every waiter saw is not "never awaited"

    async def _issue(self, key: Key, stored: str) -> Credential:
        env, name = key
        policy = self.state.settings.policy(name)
        provider = self.providers.get(policy.kind)
        if provider is None:
            raise BrokerDenied("secret_denied", f"secret {name}: kind {policy.kind} is not known")
        material = self._material(key, stored)
        credential = await provider.issue(Secret(env, name, policy, material), material)
        if credential.until <= self.clock():
            raise BrokerDenied("upstream_error", f"the token issued for {name} has expired")
        if credential.rotated is not None:
            # The issuer refused the old one from now on: the new one is kept (in memory at
            # once, on disk before its token is used), or the secret is lost.
            known = self._materials.setdefault(key, _Material(material))
            known.superseded.add(material)
            known.newest = material = credential.rotated
            await self._store(env, name, material)
        # A token that lasts less than two minutes is renewed half way through its life.
        margin = min(RENEW_BEFORE, max(credential.until - self.clock(), 0) / 2)
        self._minted[key] = (material, credential, credential.until - margin)
        self._spent.pop(key, None)
        self.changed()  # the proxies' redaction set gains the token
        return credential

    async def _store(self, env: str, name: str, material: str) -> None:
        view = self.state.view
        if view is None:
            raise BrokerDenied("broker_unavailable", "the broker has no store to write to")
        try:
            await asyncio.to_thread(view.backend.set, env, name, material)
        except Exception as exc:
            log.error("storing the rotated refresh token of %s failed: %s", name, exc)
            raise BrokerDenied(
                "broker_unavailable",
                f"the rotated refresh token of {name} could not be stored; the token it came "
                "with is not used until it is",
            ) from None

    async def _audit(self, fields: Mapping[str, Any]) -> None:
        try:
            await asyncio.to_thread(append_event, self.state.paths.audit_dir, "token", fields)
        except BlindkeyError as exc:
            raise BrokerDenied("audit_unavailable", str(exc)) from None

    def expire(self) -> bool:
        """Drop tokens due for renewal (the proxies forget them and ask again)."""
        now = self.clock()
        due = [key for key, (_, _, renew) in self._minted.items() if now >= renew]
        for key in due:
            self._spent[key] = self._minted.pop(key)[1].value
        if due:
            self.changed()
        return bool(due)

    def redaction_set(self, view: ValueView, env: str) -> dict[str, str]:
        """`env`'s values without any material, with the tokens minted from it instead."""
        values = view.snapshot(env)
        for name in [n for n in values if self.computed(n)]:
            del values[name]
            token = self._minted.get((env, name))
            spent = self._spent.get((env, name))
            if token is not None or spent is not None:
                values[name] = token[1].value if token is not None else str(spent)
        return values

    def stable(self, values: dict[str, str]) -> dict[str, str]:
        """`values` with each material replaced by what names the credential (its kind and
        where it comes from), so a placeholder does not change when a refresh token rotates."""
        for name in [n for n in values if self.computed(n)]:
            p = self.state.settings.policy(name)
            parts = (p.kind, p.token_url, p.client_id, p.scope, p.app_id, p.installation_id,
                     p.api_url)  # fmt: skip
            # The role joins only where there is one: other placeholders stay as they were.
            values[name] = "\0".join((*parts, p.role_arn) if p.role_arn else parts)
        return values
