"""What the broker knows: settings, vault values and agents, reloaded when their files change."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from broker.agents import AgentRecord, AgentStore, token_hash
from broker.protocol import BrokerDenied
from broker.vault import FileVault, VaultData
from config.errors import BlindkeyError
from config.paths import Paths
from config.settings import Settings, load_settings

log = logging.getLogger("blindkey.broker")
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Resolution:
    agent: str
    env: str
    values: dict[str, str]
    denied: BrokerDenied | None


def _fingerprint(files: tuple[Path, ...]) -> tuple[tuple[int, int, int, int], ...]:
    stamps = []
    for file in files:
        try:
            st = file.stat()
        except FileNotFoundError:
            stamps.append((0, 0, 0, 0))
            continue
        # ctime too: two same-size writes within one mtime tick can reuse an inode.
        stamps.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


class BrokerState:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.vault = FileVault(paths)
        self.agent_store = AgentStore(paths.agents_file, paths.lock_file)
        self.generation = 0
        self.settings = Settings()
        self.values: VaultData = {}
        self.agents_by_hash: dict[str, AgentRecord] = {}
        self.last_error: str | None = None
        self._stamp: tuple[tuple[int, int, int, int], ...] = ()

    def _files(self) -> tuple[Path, ...]:
        return (self.paths.config_file, self.paths.vault_file, self.paths.agents_file)

    def refresh(self) -> bool:
        """Reload if any file changed; True when what the broker serves changed."""
        stamp = _fingerprint(self._files())
        if stamp == self._stamp:
            return False
        try:
            settings = load_settings(self.paths.config_file)
            values = self.vault.load()
            agents = self.agent_store.load()
        except BlindkeyError as exc:
            # Keep serving what was last valid; a half-edited file must not empty the broker.
            if str(exc) != self.last_error:
                log.error("reload refused: %s", exc)
            self.last_error = str(exc)
            return False
        self._stamp = stamp
        self.last_error = None
        self.settings = settings
        self.values = values
        self.agents_by_hash = {a.token_sha256: a for a in agents.values() if a.revoked is None}
        self.generation += 1
        return True

    def authenticate(self, token: str | None) -> str:
        if token is None:
            if self.settings.proxy.require_agent_token:
                raise BrokerDenied("unauthenticated", "X-AS-Agent-Token is required")
            return ANONYMOUS
        digest = token_hash(token)
        record = self.agents_by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.token_sha256, digest):
            raise BrokerDenied("unauthenticated", "unknown or revoked agent token")
        return record.name

    def resolve(self, token: str | None, names: list[str], host: str) -> Resolution:
        agent = self.authenticate(token)
        env = self.settings.active_env
        env_values = self.values.get(env, {})
        values: dict[str, str] = {}
        for name in names:
            if name not in env_values:
                return Resolution(
                    agent,
                    env,
                    {},
                    BrokerDenied("unknown_secret", f"no secret named {name} in environment {env}"),
                )
            policy = self.settings.policy(name)
            if not policy.allows_agent(agent):
                return Resolution(
                    agent,
                    env,
                    {},
                    BrokerDenied("secret_denied", f"secret {name} is not bound to agent {agent}"),
                )
            if "proxy" not in policy.release:
                return Resolution(
                    agent,
                    env,
                    {},
                    BrokerDenied("secret_denied", f"secret {name} is not released to the proxy"),
                )
            if not policy.allows_host(host):
                return Resolution(
                    agent,
                    env,
                    {},
                    BrokerDenied("secret_denied", f"secret {name} is not bound to host {host}"),
                )
            if policy.tier != "open":
                return Resolution(
                    agent,
                    env,
                    {},
                    BrokerDenied(
                        "approval_required",
                        f"secret {name} is {policy.tier}: a human must approve its use first",
                    ),
                )
            values[name] = env_values[name]
        return Resolution(agent, env, values, None)

    def redaction_set(self) -> dict[str, str]:
        """Every value of the active environment: more than any one agent may use, never less."""
        return dict(self.values.get(self.settings.active_env, {}))
