"""What the broker knows: settings, values and agents, reloaded when their files change."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, NoReturn

from blindkey.broker.agents import (
    AgentRecord,
    AgentStore,
    live_tokens,
    narrowed_refusal,
    token_hash,
)
from blindkey.broker.approvals.core import Clock, approvals_count
from blindkey.broker.approvals.model import Scope
from blindkey.broker.approvals.service import Approvals
from blindkey.broker.backends import SecretBackend, open_backend
from blindkey.broker.budget import Budgets, spend_refusal
from blindkey.broker.cache import MISSING, ValueView, view_for
from blindkey.broker.credentials.aws import redaction_parts
from blindkey.broker.credentials.minted import Credentials
from blindkey.broker.policy_gate import PolicyGate
from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.rules import ALLOWED, THIS_CALL, RuleSet, Verdict
from blindkey.broker.slow_store import SlowStore
from blindkey.config.errors import BlindkeyError
from blindkey.config.hosts import entry_for, origin
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.config.secrets_table import SecretPolicy
from blindkey.config.stores import BackendSettings

log = logging.getLogger("blindkey.broker")
ANONYMOUS = "anonymous"
OPEN_POLICY = SecretPolicy()  # a name without a [secrets.NAME] table
Stamp = tuple[tuple[int, int, int, int], ...]


class BrokerAnswer(NamedTuple):
    """What the broker answers one resolve: who asked, where, and the values or the refusal."""

    agent: str
    env: str
    values: dict[str, str]
    denied: BrokerDenied | None
    # Names the view could not answer from memory: fetch them, then resolve again.
    missing: tuple[str, ...] = ()
    rules: Verdict = ALLOWED  # policy per request: would_deny, how long the answer holds


def _not_bound(name: str, policy: SecretPolicy, target: Scope) -> str:
    scheme, host, port = target
    entry = entry_for(scheme, host, port)
    bound = ", ".join(str(e) for e in policy.hosts)
    return (
        f"secret {name} is not bound to {origin(scheme, host, port)} (its hosts: {bound}; a "
        f"bare host means https on port 443): to send it there, add {entry!r} to "
        f"[secrets.{name}] hosts"
    )


def _fingerprint(files: Iterable[Path]) -> Stamp:
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


class BrokerState(SlowStore):
    def __init__(
        self,
        paths: Paths,
        clock: Clock = time.time,
        *,
        on_change: Callable[[], None] | None = None,
        on_outcome: Callable[[str, str], None] | None = None,
    ) -> None:
        self.paths = paths
        self.clock = clock  # narrowed tokens expire by it
        # What agents spent on LLM calls, per UTC day and month (budget.json).
        self.budgets = Budgets(paths.state_dir / "budget.json", clock)
        # Its rate buckets and budgets keep time by `clock` too.
        self.rules = RuleSet.empty(clock, self.budgets, paths.state_dir / "rates.json")
        # Approvers, grants and tier floors: the broker's own file, never config.toml.
        self.approvals = Approvals(paths, clock, on_change=self._bump, on_outcome=on_outcome)
        self.credentials = Credentials(self, clock, self._bump)  # oauth2, github-app tokens
        self.agent_store = AgentStore(paths.agents_file, paths.lock_file)
        # The last approved policy: a config.toml that widens it waits for a code.
        self.policy = PolicyGate(paths, self.approvals, self.held)
        self.generation = 0
        self.settings = Settings()
        self.view: ValueView | None = None
        self.agents_by_hash: dict[str, AgentRecord] = {}
        self.last_error: str | None = None
        self.backend_error: str | None = None
        # Called after every generation change (the server pushes an invalidation).
        self.on_change = on_change
        self._storage: BackendSettings | None = None
        self._stamp: Stamp = ()
        self._store_stamp: Stamp = ()
        self._fetching: dict[tuple[str, str], asyncio.Future[None]] = {}
        # One thread: keychain and HTTP clients are not shared across threads.
        self._executor: ThreadPoolExecutor | None = None

    def _bump(self) -> None:
        self.generation += 1
        if self.on_change is not None:
            self.on_change()

    def _open_view(self, settings: Settings) -> tuple[ValueView, Stamp]:
        backend: SecretBackend = open_backend(self.paths, settings)
        view = view_for(backend, settings.storage.cache_ttl)
        # Stamped before reading: a change made meanwhile is read on the next poll.
        stamp = _fingerprint(backend.watched())
        # The file vault is read whole (and refused if it does not decrypt: the old view
        # stays); a keychain index is taken as the baseline later changes are told from.
        view.reload()
        return view, stamp

    def refresh(self) -> bool:
        """Reload if any file changed; True when what the broker serves changed."""
        files = (self.paths.config_file, self.paths.agents_file)
        stamp = _fingerprint(files)
        watched = self.view.backend.watched() if self.view is not None else ()
        store_stamp = _fingerprint(watched)
        if stamp == self._stamp and store_stamp == self._store_stamp:
            return False
        try:
            settings = self.policy.admit()
            agents = self.agent_store.load()
            view = self.view
            if view is None or settings.storage != self._storage:
                view, store_stamp = self._open_view(settings)
            elif store_stamp != self._store_stamp:
                view.reload()
        except BlindkeyError as exc:
            # Keep serving what was last valid; a half-edited file must not empty the broker.
            if str(exc) != self.last_error:
                log.error("reload refused: %s", exc)
            self.last_error = str(exc)
            return False
        if view is not self.view:
            if self.view is not None:
                self.view.backend.close()
            self.view = view
        self._stamp = stamp
        self._store_stamp = store_stamp
        self._storage = settings.storage
        self.last_error = None
        self.settings = settings
        self.rules = self.rules.reload(settings)
        self.agents_by_hash = live_tokens(agents)  # narrowed ones only with their parent
        self._follow_tiers()
        self._bump()
        return True

    def held(self, name: str) -> bool:
        """Whether any environment still stores `name`; unknown counts as stored."""
        view = self.view
        if view is None:
            return True
        try:
            return any(name in view.backend.names(env) for env in self.settings.environments)
        except Exception:  # a store that does not answer: assume the value is there
            return True

    def reread(self) -> bool:
        """Apply config.toml again even if unchanged (a code just approved it)."""
        self._stamp = ()
        return self.refresh()

    def _follow_tiers(self) -> None:
        try:
            self.approvals.load()
            self.approvals.follow(self.settings)
        except BlindkeyError as exc:
            # Grants cannot be read: every gated secret stays refused (fail closed).
            log.error("approvals: %s", exc)

    def refresh_approvals(self) -> bool:
        """Re-read the approvals file if another process changed it, drop expired grants;
        True when what is served changed."""
        was_broken = self.approvals.broken
        try:
            changed = self.approvals.load()
            if changed:
                self.approvals.follow(self.settings)
            expired = self.approvals.expire()
        except BlindkeyError as exc:
            if str(exc) != was_broken:
                log.error("approvals: %s", exc)
            # Unreadable now: grants a proxy kept must go (gated secrets are refused).
            if was_broken is None and self.approvals.broken is not None:
                self._bump()
                return True
            return False
        if changed and not expired:
            self._bump()
        return changed or expired

    def forget(self, keys: Iterable[tuple[str, str]]) -> bool:
        """Drop cached values the CLI just changed; True when what is served changed."""
        if self.view is not None and self.view.forget(keys):
            self._bump()
            return True
        return False

    def expire(self) -> bool:
        # Grants first: a grant that ran out is pushed within the watch interval (0.2 s).
        approvals = self.refresh_approvals() | self.credentials.expire()
        if self.view is not None and self.view.expire():
            self._bump()
            return True
        return approvals

    def authenticate(self, token: str | None, *, narrowed: bool = False) -> str:
        """The agent a token is; a narrowed token (`agent token`) only where `narrowed`
        says its limits are applied (the proxy's calls)."""
        caller = self._caller(token)
        if caller is None:
            return ANONYMOUS
        if caller.narrowed is not None and not narrowed:
            raise BrokerDenied("unauthenticated", "a narrowed token works with the proxy only")
        return caller.agent

    def _caller(self, token: str | None) -> AgentRecord | None:
        if token is None:
            if self.settings.proxy.require_agent_token:
                raise BrokerDenied("unauthenticated", "X-AS-Agent-Token is required")
            return None
        digest = token_hash(token)
        record = self.agents_by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.token_sha256, digest):
            raise BrokerDenied("unauthenticated", "unknown or revoked agent token")
        return record

    def resolve(
        self, token: str | None, names: list[str], host: str, scheme: str = "https",
        port: int = 443, method: str = "", path: str | None = None,
    ) -> BrokerAnswer:  # fmt: skip
        """The values `names` for a call of `method` on `path` (raw, no query; None: rules
        on paths refuse) to scheme://host:port (default: what a bare host names), or why not."""
        view = self.view
        if view is None:
            # Nothing was ever loaded: no agents to know a token by, no values.
            raise BrokerDenied(
                "broker_unavailable", self.last_error or "the broker has loaded nothing yet"
            )
        caller = self._caller(token)
        agent = ANONYMOUS if caller is None else caller.agent
        env = self.settings.active_env
        lookup = view.lookup
        found = [lookup(env, name) for name in names]
        if MISSING in found:
            missing = tuple(n for n, v in zip(names, found, strict=True) if v is MISSING)
            return BrokerAnswer(agent, env, {}, None, missing)
        target = (scheme, host, port)
        denied, verdict, _ = self.decide(caller, agent, env, names, found, target, method, path)
        if denied is not None:
            return BrokerAnswer(agent, env, {}, denied, (), verdict)
        given = {n: v for n, v in zip(names, found, strict=True) if isinstance(v, str)}
        values, unminted = self.credentials.substitute(env, given)  # _check refused None
        return BrokerAnswer(agent, env, values, None, unminted, verdict)

    def decide(
        self, caller: AgentRecord | None, agent: str, env: str, names: list[str],
        found: Sequence[object], target: Scope, method: str, path: str | None, *, take: bool = True,
    ) -> tuple[BrokerDenied | None, Verdict, str | None]:  # fmt: skip
        """The one decision of a call (resolve's, and `policy test` and `replay`'s): the
        refusal, the rules' verdict, the name refused. `take`: count it against rates."""
        # Methods and paths before tiers (no human is asked for a call refused anyway).
        verdict = self.rules.decide(agent, names, method, path)
        if caller is not None and caller.narrowed is not None:  # its limits, then NAME's
            limited = narrowed_refusal(caller, names, target, method, path, self.clock())
            # Answered per call: a proxy must not keep it past the token's expiry.
            verdict = Verdict(limited or verdict.denied, verdict.would_deny, THIS_CALL)
        for name, value in zip(names, found, strict=True):
            denied = verdict.denied or self._check(agent, env, name, target, value)
            if denied is not None:
                return denied, verdict, name
        verdict = self.rules.count(agent, names, verdict, take=take)  # rates: all else passed
        return verdict.denied, verdict, None

    def _check(
        self, agent: str, env: str, name: str, target: Scope, value: object
    ) -> BrokerDenied | None:
        if value is None:
            return BrokerDenied("unknown_secret", f"no secret named {name} in environment {env}")
        policy = self.settings.secrets.get(name, OPEN_POLICY)
        if not policy.allows_agent(agent):
            return BrokerDenied("secret_denied", f"secret {name} is not bound to agent {agent}")
        if "proxy" not in policy.release:
            return BrokerDenied("secret_denied", f"secret {name} is not released to the proxy")
        if not policy.allows_host(*target):
            return BrokerDenied("secret_denied", _not_bound(name, policy, target))
        if not policy.hosts and self.policy.refused and not self._allowlisted(target):
            # "Any allowlisted host" means the allowlist this broker approved, not one a
            # proxy read from a file the broker refused.
            return BrokerDenied(
                "secret_denied",
                f"secret {name}: {origin(*target)} is not on the approved allowlist",
            )
        return self._gate(agent, env, name, policy, target)

    def _allowlisted(self, target: Scope) -> bool:
        return any(entry.matches(*target) for entry in self.settings.allowlist.entries)

    def _gate(
        self, agent: str, env: str, name: str, policy: SecretPolicy, target: Scope | None
    ) -> BrokerDenied | None:
        if self.approvals.broken is not None:
            return self.approvals.refusal(name, policy)
        asked = self.rules.asks(agent)  # a day's spend past approve_above_usd: a grant
        if asked is not None and not self.approvals.in_force(name, env, agent, target):
            return spend_refusal(agent, name, asked)
        # The hot path: an open secret that no approver ever raised needs nothing more.
        if policy.tier == "open" and not self.approvals.floors.raised(name):
            return None
        tier, _ = self.approvals.effective(name, policy)
        if tier == "open" or self.approvals.in_force(name, env, agent, target):
            return None
        needed, have = self.approvals.progress(name, env, agent, target, policy)
        return BrokerDenied(
            "approval_required",
            f"secret {name} is {tier}: a human must approve its use first"
            f"{approvals_count(needed, have)}",
        )

    def check_release(
        self, agent: str, env: str, name: str, channel: str, target: Scope | None = None
    ) -> BrokerDenied | None:
        """Whether `agent` may have `name`'s value through `channel` (proxy, env, exec) now:
        bindings, release channels, tiers and grants applied. None: it may. `target`: the
        proxy's destination; without one only grants for every destination count."""
        policy = self.settings.secrets.get(name, OPEN_POLICY)
        if not policy.allows_agent(agent):
            return BrokerDenied("secret_denied", f"secret {name} is not bound to agent {agent}")
        if channel not in policy.release or (channel != "proxy" and policy.kind != "value"):
            return BrokerDenied("secret_denied", f"secret {name} is not released to {channel}")
        return self._gate(agent, env, name, policy, target)

    def holds(self, env: str, name: str) -> bool:
        """Whether the store may hold `name` in `env` (False only when surely not)."""
        return self.view is None or self.view.lookup(env, name) is not None

    def unavailable(self) -> NoReturn:
        # An error, not a denial: a proxy may cache denials, and this one passes.
        raise BrokerDenied(
            "broker_unavailable", self.backend_error or "the secret store is not answering"
        )

    def redaction_set(self) -> dict[str, str]:
        """Every value of the active environment: more than any one agent may use, never less."""
        if self.view is None:
            return {}
        # Minted tokens instead of what they are minted from, and the parts of AWS keys: an
        # answer echoes a key id, never the stored object.
        return redaction_parts(self.credentials.redaction_set(self.view, self.settings.active_env))

    def environment_values(self, env: str) -> dict[str, str]:
        """The values of `env` this broker holds now (for placeholders, never released)."""
        return {} if self.view is None else self.credentials.stable(self.view.snapshot(env))

    def placeholder_prefixes(self) -> dict[str, str]:
        """name -> `[secrets.NAME] placeholder_prefix`, for the secrets that set one."""
        return {
            name: policy.placeholder_prefix
            for name, policy in self.settings.secrets.items()
            if policy.placeholder_prefix
        }

    async def fetch(self, env: str, names: Sequence[str]) -> bool:
        """Read names the view lacks (False: the store failed, see backend_error), then mint
        their tokens (BrokerDenied when that fails)."""
        ok = await self._read(env, names)
        await self.credentials.mint(env, names)
        return ok

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self.view is not None:
            self.view.backend.close()
