"""Agent identities: a token shown once, stored only as its SHA-256.

A narrowed token (`blindkey agent token NAME ...`) acts as NAME with less: only some of
its secrets, hosts, methods and paths, until it expires. It is a record of its own
(`NAME~ID`, a key no agent name can take) that names its parent and the parent token's
hash: revoking NAME, or re-adding it (a new token), ends every token narrowed from it. The
broker applies NAME's whole policy and then the token's limits, so a narrowed token can
only ever do less than NAME; it works with the proxy only (never `env`, `exec` or `mcp`).
"""

from __future__ import annotations

import functools
import hashlib
import secrets as secrets_module
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.rules import Scope
from blindkey.config.atomic import locked, write_atomic
from blindkey.config.errors import BlindkeyError
from blindkey.config.hosts import AllowEntry, origin
from blindkey.config.model import AGENT_NAME

TOKEN_PREFIX = "bk_"  # noqa: S105 - a prefix, not a credential
DERIVED = "~"  # NAME~ID: no agent name holds it
MAX_TTL = 30 * 86400.0


class AgentError(BlindkeyError):
    pass


def token_hash(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash cannot be brute-forced.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Narrowing:
    """What a narrowed token may do, within its parent's rights; empty: as the parent."""

    parent: str
    parent_sha256: str
    expires: float
    secrets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    @classmethod
    def of(cls, raw: Any) -> Narrowing | None:
        if not isinstance(raw, dict):
            return None
        lists = {k: tuple(raw.get(k) or ()) for k in ("secrets", "hosts", "methods", "paths")}
        return cls(str(raw["parent"]), str(raw["parent_sha256"]), float(raw["expires"]), **lists)

    def fields(self) -> dict[str, Any]:
        return {"parent": self.parent, "parent_sha256": self.parent_sha256,
                "expires": self.expires, "secrets": list(self.secrets),
                "hosts": list(self.hosts), "methods": list(self.methods),
                "paths": list(self.paths)}  # fmt: skip


@dataclass(frozen=True)
class AgentRecord:
    name: str
    token_sha256: str
    created: float
    revoked: float | None = None
    narrowed: Narrowing | None = field(default=None)

    @property
    def agent(self) -> str:
        """Whom the token acts as: a narrowed token's parent."""
        return self.name if self.narrowed is None else self.narrowed.parent


def live_tokens(agents: dict[str, AgentRecord]) -> dict[str, AgentRecord]:
    """Token hash -> record, for every token that works now (expiry is checked per use):
    a narrowed token only while its parent is unrevoked and still has the same token."""
    live = {name: a for name, a in agents.items() if a.revoked is None}
    found = {}
    for record in live.values():
        narrowed = record.narrowed
        if narrowed is not None:
            parent = live.get(narrowed.parent)
            if parent is None or parent.narrowed is not None:
                continue
            if parent.token_sha256 != narrowed.parent_sha256:
                continue
        found[record.token_sha256] = record
    return found


class AgentStore:
    def __init__(self, path: Path, lock_path: Path) -> None:
        self.path = path
        self.lock_path = lock_path

    def load(self) -> dict[str, AgentRecord]:
        try:
            raw = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except orjson.JSONDecodeError as exc:
            raise AgentError(f"{self.path}: corrupt agent file: {exc}") from exc
        return {
            name: AgentRecord(
                name=name,
                token_sha256=fields["token_sha256"],
                created=fields["created"],
                revoked=fields.get("revoked"),
                narrowed=Narrowing.of(fields.get("narrowed")),
            )
            for name, fields in raw.items()
        }

    def _store(self, agents: dict[str, AgentRecord]) -> None:
        payload: dict[str, Any] = {}
        for a in agents.values():
            payload[a.name] = {"token_sha256": a.token_sha256, "created": a.created,
                               "revoked": a.revoked}  # fmt: skip
            if a.narrowed is not None:
                payload[a.name]["narrowed"] = a.narrowed.fields()
        write_atomic(self.path, orjson.dumps(payload, option=orjson.OPT_INDENT_2))

    def narrow(
        self, parent: str, ttl: float, secrets: tuple[str, ...] = (), hosts: tuple[str, ...] = (),
        methods: tuple[str, ...] = (), paths: tuple[str, ...] = (),
    ) -> tuple[str, str]:  # fmt: skip
        """A token that acts as `parent` with these limits until ttl seconds from now:
        (its record's name, the token)."""
        if not 0 < ttl <= MAX_TTL:
            raise AgentError("--ttl must be more than 0 and at most 30 days")
        token = TOKEN_PREFIX + secrets_module.token_urlsafe(32)
        with locked(self.lock_path):
            agents = self.load()
            record = agents.get(parent)
            if record is None or record.revoked is not None or record.narrowed is not None:
                raise AgentError(
                    f"no active agent named {parent!r} to narrow; see `blindkey agent list`"
                )
            name = f"{parent}{DERIVED}{secrets_module.token_hex(4)}"
            now = time.time()
            limits = Narrowing(parent, record.token_sha256, now + ttl, secrets, hosts,
                               methods, paths)  # fmt: skip
            agents[name] = AgentRecord(name, token_hash(token), now, None, limits)
            self._store(agents)
        return name, token

    def add(self, name: str) -> str:
        # fullmatch: the pattern's `$` would also accept a trailing newline.
        if not AGENT_NAME.fullmatch(name):
            raise AgentError(
                f"invalid agent name {name!r}: use letters, digits, '_', '.', '-' (max 64)"
            )
        token = TOKEN_PREFIX + secrets_module.token_urlsafe(32)
        with locked(self.lock_path):
            agents = self.load()
            existing = agents.get(name)
            if existing is not None and existing.revoked is None:
                raise AgentError(
                    f"agent {name!r} already exists; `blindkey agent revoke {name}` first"
                )
            agents[name] = AgentRecord(
                name=name, token_sha256=token_hash(token), created=time.time()
            )
            self._store(agents)
        return token

    def revoke(self, name: str) -> None:
        with locked(self.lock_path):
            agents = self.load()
            record = agents.get(name)
            if record is None:
                raise AgentError(f"no agent named {name!r}; see `blindkey agent list`")
            if record.revoked is None:
                agents[name] = AgentRecord(
                    name=name,
                    token_sha256=record.token_sha256,
                    created=record.created,
                    revoked=time.time(),
                    narrowed=record.narrowed,
                )
                self._store(agents)


class _Limits:
    """A narrowed token's methods and paths, shaped as a rules table (rules.Scope)."""

    def __init__(self, narrowed: Narrowing) -> None:
        self.methods, self.paths, self.rate = narrowed.methods, narrowed.paths, None


@functools.lru_cache(maxsize=1024)
def _scope(name: str, narrowed: Narrowing) -> Scope | None:
    return Scope.of(f"tokens.{name}", f"token {name}", _Limits(narrowed))


@functools.lru_cache(maxsize=1024)
def _hosts(hosts: tuple[str, ...]) -> tuple[AllowEntry, ...]:
    return tuple(AllowEntry.binding(h) for h in hosts)


def narrowed_refusal(
    record: AgentRecord, names: list[str], target: tuple[str, str, int], method: str,
    path: str | None, now: float,
) -> BrokerDenied | None:  # fmt: skip
    """Why a narrowed token may not make this call (None: it may, as far as its own limits
    go; its parent's policy is applied after). An expired token is no token."""
    narrowed = record.narrowed
    assert narrowed is not None
    if now >= narrowed.expires:
        raise BrokerDenied("unauthenticated", f"token {record.name} has expired")
    if not names:
        return None
    where = f"tokens.{record.name}"
    outside = [n for n in names if narrowed.secrets and n not in narrowed.secrets]
    if outside:
        return BrokerDenied(
            "secret_denied",
            f"token {record.name} may use {', '.join(narrowed.secrets)} only, not "
            f"{', '.join(outside)} (rule {where}.secrets)",
            detail=f"{where}.secrets",
        )
    if narrowed.hosts and not any(e.matches(*target) for e in _hosts(narrowed.hosts)):
        return BrokerDenied(
            "secret_denied",
            f"token {record.name} may call {', '.join(narrowed.hosts)} only, not "
            f"{origin(*target)} (rule {where}.hosts)",
            detail=f"{where}.hosts",
        )
    scope = _scope(record.name, narrowed)
    return None if scope is None else scope.refusal(method, path)
