"""Authorise: who the caller is and which values it may have, asked of the broker.

The broker decides (tokens, per-secret policy, environment) and releases values; this side
keeps its answers until the broker pushes an invalidation (any change to secrets, agents
or policy), so the hot path skips the socket round trip, and keeps the redactor for the
current set of values, built off the event loop once per change.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from blindkey.broker.approvals_core import approvals_count
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import BrokerDenied, BrokerUnavailable, Message
from blindkey.redact.redactor import Redactor

MAX_CACHED_RESOLUTIONS = 4096
APPROVAL = "approval_required"
MAX_OUTCOMES = 256


@dataclass(frozen=True)
class Grant:
    """What the broker released for one request."""

    agent: str
    env: str
    values: dict[str, str]
    redactor: Redactor


# The caller's agent and environment, and the values released or the broker's refusal.
Resolution = tuple[str, str, "Grant | BrokerDenied"]
ResolutionKey = tuple[str | None, tuple[str, ...], str, str, int]


class Authoriser:
    """The proxy's link to the broker, with the answers and redactor it may keep."""

    def __init__(self, socket_path: Path, on_invalidate: Callable[[], None]) -> None:
        # on_invalidate: what else must be re-read before a change counts as applied
        # (config.toml: the allowlist is the proxy's to enforce).
        self.on_invalidate = on_invalidate
        self.broker = BrokerClient(socket_path, on_push=self._on_push)
        self._redactor = Redactor({})
        self._redactor_values: dict[str, str] = {}
        self._redactor_generation = -1
        self._redactor_lock = asyncio.Lock()
        self._resolutions: dict[ResolutionKey, Resolution] = {}
        self._resolutions_epoch = -1
        self._invalidations = 0
        # sha256 of the config.toml text the broker serves (its approved policy).
        self.config_sha256: str | None = None
        # Calls held for a human (X-AS-Wait-Approval), by approval id: woken by the broker's
        # pushes (a grant appeared, a request was approved, denied or forgotten).
        self._held: dict[str, set[asyncio.Future[str]]] = {}
        self._closing = False
        self._outcomes: dict[str, str] = {}

    def forget(self) -> None:
        self._resolutions.clear()

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
            self._resolutions.clear()
            self.config_sha256 = message.get("config_sha256")
            self.on_invalidate()
            if self._held:
                self._wake(None, "changed")
        elif event == "approval":
            approval_id = message.get("approval_id")
            if isinstance(approval_id, str):
                outcome = str(message.get("outcome"))
                # Kept a while: a held call may register just after its push arrived.
                self._outcomes[approval_id] = outcome
                while len(self._outcomes) > MAX_OUTCOMES:
                    del self._outcomes[next(iter(self._outcomes))]
                self._wake(approval_id, outcome)

    def catch_up(self) -> None:
        """Before a call is checked: if the broker could not reach us (not connected yet, or
        reconnected), invalidations may have been missed; forget what was kept and re-read
        what a change the CLI made meanwhile (it found no proxy to wait for) may have
        touched. Costs two attribute reads when connected."""
        epoch = self.broker.connection_epoch
        if epoch != self._resolutions_epoch or not self.broker.connected:
            self._resolutions.clear()
            self._resolutions_epoch = epoch
            self.on_invalidate()

    async def resolve(
        self, token: str | None, names: list[str], host: str, scheme: str = "https",
        port: int = 443,
    ) -> Resolution:  # fmt: skip
        """(agent, env, grant or the broker's refusal) for a call to scheme://host:port
        (bindings and grants name all three); raises for unauthenticated callers
        (BrokerDenied) and when the broker cannot answer (BrokerUnavailable)."""
        key = (token, tuple(names), host, scheme, port)
        if self.broker.connected and self.broker.connection_epoch == self._resolutions_epoch:
            cached = self._resolutions.get(key)
            if cached is not None:
                return cached
        epoch, invalidations = self.broker.connection_epoch, self._invalidations
        resolution = await self._ask_broker(token, names, host, scheme, port)
        # An invalidation handled while this call waited may be newer than its answer
        # (both can arrive in one read): the answer serves this call, which began before
        # the change, and no later one.
        unchanged = (
            epoch == self.broker.connection_epoch == self._resolutions_epoch
            and invalidations == self._invalidations
        )
        # A refusal for want of a grant is not kept: a human may approve at any moment.
        gated = isinstance(resolution[2], BrokerDenied) and resolution[2].code == APPROVAL
        if unchanged and not gated:
            if len(self._resolutions) >= MAX_CACHED_RESOLUTIONS:
                self._resolutions.clear()
            self._resolutions[key] = resolution
        return resolution

    async def identify(self, token: str | None) -> tuple[str, str]:
        """Who the caller is, with no value released (for the record of a refusal)."""
        agent, env, _ = await self.resolve(token, [], "")
        return agent, env

    async def _ask_broker(
        self, token: str | None, names: list[str], host: str, scheme: str, port: int
    ) -> Resolution:
        reply = await self.broker.call(
            "resolve", token=token, names=names, host=host, scheme=scheme, port=port
        )
        agent, env = str(reply["agent"]), str(reply["env"])
        denied = reply.get("denied")
        if denied:
            return agent, env, BrokerDenied(str(denied["error"]), str(denied["message"]))
        values: dict[str, str] = dict(reply["values"])
        redactor = await self._current_redactor(int(reply["generation"]), values)
        return agent, env, Grant(agent=agent, env=env, values=values, redactor=redactor)

    async def _current_redactor(self, generation: int, needed: Mapping[str, str]) -> Redactor:
        async with self._redactor_lock:
            if generation != self._redactor_generation:
                reply = await self.broker.call("redaction_set")
                values = dict(reply["values"])
                # Compiling patterns for 50 values of 4 KB takes a while: not on the loop.
                self._redactor = await asyncio.to_thread(Redactor, values)
                self._redactor_values = values
                self._redactor_generation = int(reply["generation"])
            redactor, known = self._redactor, self._redactor_values
        if all(known.get(name) == value for name, value in needed.items()):
            return redactor
        # The set changed between resolve and fetch: never stream without the used values.
        return await asyncio.to_thread(Redactor, {**known, **needed})

    # --- calls held for a human ---------------------------------------------------------

    async def hold(
        self, token: str | None, names: list[str], target: tuple[str, str, int], method: str,
        path: str, known: str | None = None,
    ) -> tuple[str | None, str, str]:  # fmt: skip
        """Record a call to target (scheme, host, port) that met a gate as a pending
        request: (approval id, the secret that needs a grant, how many approvals it needs
        and has when one is not enough, else ""); the id is None when nothing needs one
        any more. `known`: the id the call had (a restarted broker takes it
        back, so the human's `approve --request ID` still finds it)."""
        scheme, host, port = target
        extra = {} if known is None else {"approval_id": known}
        reply = await self.broker.call(
            "hold", token=token, names=names, scheme=scheme, host=host, port=port,
            method=method, path=path, **extra,
        )  # fmt: skip
        approval_id = reply.get("approval_id")
        needed, have = reply.get("needed"), reply.get("have")
        count = (
            approvals_count(needed, have)
            if isinstance(needed, int) and isinstance(have, int)
            else ""
        )
        return (str(approval_id) if approval_id else None), str(reply.get("secret", "")), count

    @property
    def changes(self) -> int:
        """Taken before asking the broker: wait() then sees a push that came meanwhile."""
        return self._invalidations

    async def wait(self, approval_id: str, within: float, since: int) -> str:
        """Until something may have decided `approval_id`: approved, denied, expired,
        changed (any grant may have appeared), timeout or shutdown."""
        if self._closing:
            return "shutdown"
        if approval_id in self._outcomes:
            return self._outcomes[approval_id]
        if self._invalidations != since:
            return "changed"
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiters = self._held.setdefault(approval_id, set())
        waiters.add(future)
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            return "timeout"
        finally:
            waiters.discard(future)
            if not waiters and self._held.get(approval_id) is waiters:
                del self._held[approval_id]

    async def rejoined(self, epoch: int) -> bool:
        """Whether the broker link is not the one of `epoch` any more (the broker went
        and came back): reconnects if it can; while the broker is away, False."""
        if not self.broker.connected:
            with contextlib.suppress(BrokerUnavailable):
                await self.broker.connect()
        return self.broker.connected and self.broker.connection_epoch != epoch

    @property
    def held(self) -> int:
        return sum(len(waiters) for waiters in self._held.values())

    def _wake(self, approval_id: str | None, outcome: str) -> None:
        chosen = (
            self._held.values() if approval_id is None else [self._held.get(approval_id, set())]
        )
        for waiters in list(chosen):
            for future in list(waiters):
                if not future.done():
                    future.set_result(outcome)

    def release_held(self) -> None:
        """Shutting down: every held call is answered now (approval_required), none waits."""
        self._closing = True
        self._wake(None, "shutdown")

    async def close(self) -> None:
        self.release_held()
        await self.broker.close()
