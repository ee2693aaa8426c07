"""Agent identities: a token shown once, stored only as its SHA-256."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from blindkey.config.atomic import locked, write_atomic
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import AGENT_NAME

TOKEN_PREFIX = "bk_"  # noqa: S105 - a prefix, not a credential


class AgentError(BlindkeyError):
    pass


def token_hash(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash cannot be brute-forced.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AgentRecord:
    name: str
    token_sha256: str
    created: float
    revoked: float | None = None


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
        return {name: AgentRecord(name=name, **fields) for name, fields in raw.items()}

    def _store(self, agents: dict[str, AgentRecord]) -> None:
        payload = {
            a.name: {"token_sha256": a.token_sha256, "created": a.created, "revoked": a.revoked}
            for a in agents.values()
        }
        write_atomic(self.path, orjson.dumps(payload, option=orjson.OPT_INDENT_2))

    def add(self, name: str) -> str:
        # fullmatch: the pattern's `$` would also accept a trailing newline.
        if not AGENT_NAME.fullmatch(name):
            raise AgentError(
                f"invalid agent name {name!r}: use letters, digits, '_', '.', '-' (max 64)"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
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
                )
                self._store(agents)
