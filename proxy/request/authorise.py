"""Authorise: who the caller is and which values it may have, asked of the broker.

The broker decides (tokens, per-secret policy, environment) and releases values; this side
keeps its answers until the broker pushes an invalidation (any change to secrets, agents
or policy), so the hot path skips the socket round trip, and keeps the redactor for the
current set of values, built off the event loop once per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from blindkey.broker.client import BrokerClient
from blindkey.broker.credentials.aws import maybe_keys
from blindkey.broker.leases import LeaseHolder
from blindkey.broker.protocol import BrokerDenied, Message
from blindkey.broker.rules import ANY_REQUEST, LEASED, THIS_CALL, THIS_REQUEST
from blindkey.config.errors import BlindkeyError
from blindkey.redact.cache import shard_cache
from blindkey.redact.redactor import Redactor

MAX_CACHED_RESOLUTIONS = 4096
# Refusals not kept: a human may approve at any moment, a rate refills.
PASSING = frozenset({"approval_required", "rate_limited"})


@dataclass(frozen=True)
class Grant:
    """What the broker released for one request."""

    agent: str
    env: str
    values: dict[str, str]
    redactor: Redactor
    # [policy] mode = "report": the refusal a method, path or rate rule would have answered.
    would_deny: dict[str, object] | None = None

    @functools.cached_property
    def aws(self) -> frozenset[str]:
        """The secrets whose values are AWS keys: told apart once per broker answer (which
        is kept), so a call that binds none skips every SigV4 check."""
        values = self.values
        return frozenset(name for name in values if maybe_keys(values[name]) is not None)


# The caller's agent and environment, and the values released or the broker's refusal.
Resolution = tuple[str, str, "Grant | BrokerDenied"]
ResolutionKey = tuple[str | None, tuple[str, ...], str, str, int]
# Kept under ResolutionKey when the broker's answer depends on the request's method and
# path (rules of the request): look under the key with both instead; THIS_CALL: not kept.
Kept = Resolution | str
PerRequest = tuple[ResolutionKey, str, str]


class Authoriser:
    """The proxy's link to the broker, with the answers and redactor it may keep."""

    def __init__(
        self,
        socket_path: Path,
        on_invalidate: Callable[[], None],
        on_approval: Callable[[str | None, str], None],
        cache_dir: Path | None = None,
    ) -> None:
        # on_invalidate: what else must be re-read before a change counts as applied
        # (config.toml: the allowlist is the proxy's to enforce).
        self.on_invalidate = on_invalidate
        # on_approval: the calls waiting for a human hear of an outcome (an approval id) or
        # of any change (None, "changed": a grant may have appeared).
        self.on_approval = on_approval
        self.broker = BrokerClient(socket_path, on_push=self._on_push)
        self._redactor = Redactor({})
        self.cache_dir = cache_dir  # the compiled redactor, sealed (redact/cache.py)
        self._redactor_values: dict[str, str] = {}
        self._redactor_generation = -1
        self._redactor_lock = asyncio.Lock()
        # Rebuilds begun by a change, before any call asks: the change's shard compiles
        # while the agent has not called yet, and a removed value's sealed shard goes now.
        self.rebuilding: set[asyncio.Task[None]] = set()
        self._resolutions: dict[ResolutionKey, Kept] = {}
        self._per_request: dict[PerRequest, Resolution] = {}
        # Counted by a rate: the answer, and the pool whose leased calls it spends.
        self._leased: dict[PerRequest, tuple[Resolution, str]] = {}
        self.leases = LeaseHolder()
        # (token, names) -> their pool: calls it holds go back before the broker decides
        # another request of theirs, so it never refuses a call this proxy holds calls for.
        self._pool_of: dict[tuple[str | None, tuple[str, ...]], str] = {}
        self._resolutions_epoch = -1
        self._invalidations = 0
        # sha256 of the config.toml text the broker serves (its approved policy).
        self.config_sha256: str | None = None

    def forget(self) -> None:
        self._resolutions.clear()
        self._per_request.clear()
        self._leased.clear()
        # Leases are the policy of before: spent no more, given back with the next lease.
        self.leases.release_all()

    def _on_push(self, message: Message) -> None:
        """An invalidation: the broker tells the CLI the change is in force once this
        returns (the acknowledgement follows it), so everything happens here, in line.

        config.toml is re-read here too, when it changed: the allowlist lives there and the
        proxy enforces it, so `allowlist add` must reach the proxy the same way a rotation
        does. One path (the CLI asks the broker, the broker asks every proxy and waits)
        keeps one answer to "is it in force?" for every change, reaches every proxy of a
        shared broker, and costs the proxy one stat per invalidation, none per request.
        """
        event = message.get("event")
        if event == "invalidate":
            self._invalidations += 1
            self._redactor_generation = -1
            self.forget()
            self.config_sha256 = message.get("config_sha256")
            self.on_invalidate()
            self.on_approval(None, "changed")
            task = asyncio.get_running_loop().create_task(self.refresh(), name="redactor-rebuild")
            self.rebuilding.add(task)
            task.add_done_callback(self.rebuilding.discard)
        elif event == "approval":
            approval_id = message.get("approval_id")
            if isinstance(approval_id, str):
                self.on_approval(approval_id, str(message.get("outcome")))

    def catch_up(self) -> None:
        """Before a call is checked: if the broker could not reach us (not connected yet, or
        reconnected), invalidations may have been missed; forget what was kept and re-read
        what a change the CLI made meanwhile (it found no proxy to wait for) may have
        touched. Costs two attribute reads when connected."""
        epoch = self.broker.connection_epoch
        if epoch != self._resolutions_epoch or not self.broker.connected:
            self.forget()
            self._resolutions_epoch = epoch
            self.on_invalidate()

    async def resolve(
        self, token: str | None, names: list[str], host: str, scheme: str = "https",
        port: int = 443, method: str = "", path: str = "/",
    ) -> Resolution:  # fmt: skip
        """(agent, env, grant or the broker's refusal) for a call of `method` on `path` (no
        query) to scheme://host:port (bindings and grants name all three); raises for
        unauthenticated callers (BrokerDenied) and when the broker cannot answer
        (BrokerUnavailable)."""
        key = (token, tuple(names), host, scheme, port)
        if self.broker.connected and self.broker.connection_epoch == self._resolutions_epoch:
            cached = self._resolutions.get(key)
            if cached == THIS_REQUEST:
                cached = self._per_request.get((key, method, path))
            elif cached == LEASED:
                cached = self._spend_lease((key, method, path))
            if cached is not None and not isinstance(cached, str):
                return cached
        epoch, invalidations = self.broker.connection_epoch, self._invalidations
        resolution, varies, lease = await self._ask_broker(
            token, names, host, scheme, port, method, path
        )
        # An invalidation handled while this call waited may be newer than its answer
        # (both can arrive in one read): the answer serves this call, which began before
        # the change, and no later one.
        unchanged = (
            epoch == self.broker.connection_epoch == self._resolutions_epoch
            and invalidations == self._invalidations
        )
        passing = isinstance(resolution[2], BrokerDenied) and resolution[2].code in PASSING
        if lease is not None:
            varies = self._hold(lease, (key, method, path), resolution, unchanged)
        if unchanged and not passing:
            self._keep(key, method, path, resolution, varies)
        return resolution

    def _spend_lease(self, request: PerRequest) -> Resolution | None:
        kept = self._leased.get(request)
        if kept is None or not self.leases.spend(kept[1]):
            return None
        return kept[0]

    def _hold(
        self, lease: Message, request: PerRequest, resolution: Resolution, unchanged: bool
    ) -> str:
        """Keep the calls the broker leased with this answer (unless policy changed while it
        was asked: then they go back unspent); how long the answer may be kept."""
        lease_id, pool, calls = str(lease["id"]), str(lease["pool"]), int(lease["calls"])
        if not unchanged:
            self.leases.give_back(lease_id, calls)
            return THIS_CALL
        self.leases.add(pool, lease_id, calls, float(lease["seconds"]))
        if len(self._leased) >= MAX_CACHED_RESOLUTIONS:
            self._leased.clear()
            self._pool_of.clear()
        self._pool_of[request[0][:2]] = pool
        self._leased[request] = (resolution, pool)
        return LEASED

    def _keep(
        self, key: ResolutionKey, method: str, path: str, resolution: Resolution, varies: str
    ) -> None:
        if len(self._resolutions) >= MAX_CACHED_RESOLUTIONS:
            self.forget()
        if varies == ANY_REQUEST:
            self._resolutions[key] = resolution
            return
        # Rules of the request: the target's key says so; a counted call is kept only
        # with a lease of calls (_hold).
        self._resolutions[key] = varies
        if varies == THIS_REQUEST:
            if len(self._per_request) >= MAX_CACHED_RESOLUTIONS:
                self._per_request.clear()
            self._per_request[(key, method, path)] = resolution

    async def identify(self, token: str | None) -> tuple[str, str]:
        """Who the caller is, with no value released (for the record of a refusal)."""
        agent, env, _ = await self.resolve(token, [], "")
        return agent, env

    async def _ask_broker(
        self, token: str | None, names: list[str], host: str, scheme: str, port: int,
        method: str, path: str,
    ) -> tuple[Resolution, str, Message | None]:  # fmt: skip
        pool = self._pool_of.get((token, tuple(names)))
        if pool is not None:
            self.leases.release(pool)
        unspent = self.leases.returns()  # given back with this call, or never
        reply = await self.broker.call(
            "resolve", token=token, names=names, host=host, scheme=scheme, port=port,
            method=method, path=path, lease=True, **({"settle": unspent} if unspent else {}),
        )  # fmt: skip
        agent, env = str(reply["agent"]), str(reply["env"])
        varies = str(reply.get("varies", ANY_REQUEST))
        denied = reply.get("denied")
        if denied:
            return (agent, env, refusal(denied)), varies, None
        values: dict[str, str] = dict(reply["values"])
        redactor = await self._current_redactor(int(reply["generation"]), values)
        would_deny = reply.get("would_deny")
        grant = Grant(agent, env, values, redactor, would_deny)
        return (agent, env, grant), varies, reply.get("lease")

    async def _current_redactor(self, generation: int, needed: Mapping[str, str]) -> Redactor:
        async with self._redactor_lock:
            if generation != self._redactor_generation:
                reply = await self.broker.call("redaction_set")
                values = dict(reply["values"])
                # Compiling patterns for 50 values of 4 KB takes a while: not on the loop.
                cache = shard_cache(self.cache_dir, reply.get("cache_key"))
                self._redactor = await asyncio.to_thread(Redactor, values, cache)
                self._redactor_values = values
                self._redactor_generation = int(reply["generation"])
            redactor, known = self._redactor, self._redactor_values
        if all(known.get(name) == value for name, value in needed.items()):
            return redactor
        # The set changed between resolve and fetch: never stream without the used values.
        return await asyncio.to_thread(Redactor, {**known, **needed})

    async def warm(self) -> None:
        """Build the redactor of the broker's current values now, so the first call does not
        wait for it (10,000 values compile for seconds). A call that comes first waits on
        the same lock and uses what this built; a broker not answering is no failure here."""
        with contextlib.suppress(BlindkeyError):
            await self._current_redactor(self._redactor_generation - 1, {})

    async def refresh(self) -> None:
        """After a change, the new set's redactor, unless a call built it first (changes in
        a burst queue here and build once)."""
        async with self._redactor_lock:
            stale = self._redactor_generation == -1
        if stale:
            await self.warm()

    async def close(self) -> None:
        for task in list(self.rebuilding):
            task.cancel()
        await self.broker.close()


def refusal(denied: Message) -> BrokerDenied:
    """The broker's refusal as it sent it: a rule's refusal names the rule (`detail`), a
    rate's says when to try again."""
    detail, retry = denied.get("detail"), denied.get("retry_after")
    return BrokerDenied(
        str(denied["error"]),
        str(denied["message"]),
        detail=detail if isinstance(detail, str) else None,
        retry_after=retry if isinstance(retry, int) else None,
    )
