"""The broker's socket server: 0600 Unix socket, peer uid checked, pipelined frames.

A protocol, not streams: every frame a read brings is answered in one write, which keeps
a resolve in the tens of microseconds when many are in flight. Replies that need the
backend (a value not cached yet) are sent when they are ready, out of order by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blindkey.audit.anchor import AnchorRefused, AuditAnchor
from blindkey.broker.approvals.events import WATCH_OP, Watchers
from blindkey.broker.approvals.notify_approver import tell_approvers
from blindkey.broker.approvals.ops import approvals_op, hold_op, refuse_foreign
from blindkey.broker.budget import budget_op, spend_op
from blindkey.broker.explain import explain_op
from blindkey.broker.peer import Client
from blindkey.broker.placeholders import ensure_key as ensure_placeholder_key
from blindkey.broker.placeholders import placeholders_op
from blindkey.broker.policy_ops import config_op
from blindkey.broker.protocol import (
    ACK_TIMEOUT,
    PUSH_ID,
    BrokerDenied,
    Message,
    encode,
)
from blindkey.broker.release import RELEASE_OPS, Releaser
from blindkey.broker.resolve import Resolve
from blindkey.broker.sockets import (
    ConnectionLimits,
    PeerCounts,
    prepare_socket_dir,
    socket_mode,
)
from blindkey.broker.state import BrokerState
from blindkey.config.paths import Paths
from blindkey.redact.cache import derive_key as derive_cache_key

log = logging.getLogger("blindkey.broker")
WATCH_INTERVAL = 0.2
SYNC_MIN, SYNC_MAX = 0.5, 60.0


# The reply to a request, or None when it is sent later (or there is none).
Operation = Callable[[Message, Client], Message | None]


class BrokerServer:
    def __init__(self, paths: Paths, socket_path: Path, allowed_uids: frozenset[int]) -> None:
        # Wired here, once: a change pushes an invalidation, an approval's outcome goes to
        # the proxies whose calls wait on it.
        self.state = BrokerState(
            paths, on_change=self._invalidate, on_outcome=self._approval_outcome
        )
        self.socket_path = socket_path
        self.allowed_uids = allowed_uids
        self.clients: set[Client] = set()
        self.limits = ConnectionLimits()
        self.peers = PeerCounts()
        self._server: asyncio.AbstractServer | None = None
        self._idle_sweep: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pushed = 0
        self._ack_waiters: list[asyncio.Future[None]] = []
        self.audit_anchor = AuditAnchor.load(paths.state_dir)
        self.placeholder_key = ensure_placeholder_key(paths)
        self.releaser = Releaser(self.state, self._spawn)  # values for env and exec
        self.watchers = Watchers(self.state.approvals.events)  # `approvals watch`, `ui`
        # What a client may ask, by the `op` of its request.
        self.operations: dict[str, Operation] = {
            "resolve": Resolve(self.state, self._spawn),
            "ping": self._ping,
            "ack": self._ack,
            "redaction_set": self._redaction_set,
            "refresh": self._refresh,
            "audit_anchor": self._audit_anchor,
            "release": self.releaser.release,
            "released": self.releaser.released,
            "mcp": self.releaser.mcp,
            "approvals": self._approvals,
            WATCH_OP: self._watch,
            "hold": lambda request, client: hold_op(self.state, request),
            "config": self._config,
            "placeholders": lambda request, client: placeholders_op(
                self.state, self.placeholder_key, request
            ),
            # LLM spend: a proxy's word of an answer's usage, and `budget status`.
            "spend": lambda request, client: spend_op(self.state, request, self._spawn),
            "budget": lambda request, client: budget_op(self.state, request),
            "explain": lambda request, client: explain_op(self.state, request),  # policy test
        }

    async def start(self) -> None:
        self.state.refresh()
        agents = self.state.settings.broker.release_uids
        shared = bool(self.allowed_uids - {os.getuid()} or agents)
        prepare_socket_dir(self.socket_path.parent, shared=shared)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old_umask = os.umask(0o177)
        try:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(
                lambda: Client(self), path=str(self.socket_path)
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, socket_mode(shared))
        self._sweep_idle()

    def clock(self) -> float:
        return asyncio.get_running_loop().time()

    def _sweep_idle(self) -> None:
        """Close connections that said nothing for idle_timeout and wait for nothing."""
        now, limit = self.clock(), self.limits.idle_timeout
        for client in list(self.clients):
            quiet = now - client.active > limit
            waits = client.caches or client in self.releaser.open or client in self.watchers
            if quiet and not waits and client.transport is not None:
                client.transport.close()
        interval = min(max(limit / 4, 0.05), 1.0)
        self._idle_sweep = asyncio.get_running_loop().call_later(interval, self._sweep_idle)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            self.state.refresh()
            self.state.expire()

    async def sync(self) -> None:
        """Keep a keychain or OpenBao cache warm: read the active environment again well
        before its values expire, so a warm value never waits for the store."""
        while True:
            await self.state.sync()
            ttl = self.state.settings.storage.cache_ttl
            await asyncio.sleep(min(max(ttl / 2, SYNC_MIN), SYNC_MAX))

    def _invalidate(self) -> None:
        self._pushed += 1
        self._push(
            {
                "event": "invalidate",
                "generation": self.state.generation,
                "ack": self._pushed,
                "config_sha256": self.state.policy.served,
            }
        )

    async def _answer_when_acknowledged(
        self, reply: Message, pushed: int, targets: list[Client], requester: Client
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT

        def late() -> int:
            # A client that went away holds nothing: it starts over when it reconnects.
            return sum(c.transport is not None and c.acked < pushed for c in targets)

        while late():
            waiter: asyncio.Future[None] = loop.create_future()
            self._ack_waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(deadline - loop.time(), 0))
            except TimeoutError:
                log.warning("a broker client did not acknowledge an invalidation in time")
                break
        # The CLI says so rather than claim a change that a proxy may not use yet.
        unconfirmed = late()
        if unconfirmed:
            reply["unconfirmed"] = unconfirmed
        requester.send(encode(reply))

    def _push(self, message: Message) -> None:
        frame = encode({"id": PUSH_ID, **message})
        for client in list(self.clients):
            client.send(frame)

    async def close(self) -> None:
        if self._idle_sweep is not None:
            self._idle_sweep.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for client in list(self.clients):
            # Unsent replies are dropped: a caller must see the broker go, not a late answer.
            if client.transport is not None:
                client.transport.abort()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.state.close()

    def dispatch(self, request: Message, client: Client) -> Message | None:
        """The reply, or None when it is sent to `client` later (or there is none)."""
        request_id, op = request.get("id"), request.get("op")
        # A JSON op may be a list or an object: those cannot even be looked up.
        operation = self.operations.get(op) if isinstance(op, str) else None
        if client.release_only and op not in RELEASE_OPS:
            # approvals and its watch are kept: their own check refuses every user but the
            # broker's, on the record (code_refused, not_broker_user), the agent's included.
            refused_on_record = {"approvals": self._approvals, WATCH_OP: self._watch}
            operation = refused_on_record.get(op) if isinstance(op, str) else None
        if operation is None:
            return {"id": request_id, "error": "bad_request", "message": f"unknown op {op!r}"}
        try:
            return operation(request, client)
        except BrokerDenied as exc:
            return {"id": request_id, "error": exc.code, "message": str(exc)}

    def _audit_anchor(self, request: Message, client: Client) -> Message:
        """Move the audit's anchor forward when a seq is given; answer where it stands."""
        if "seq" in request:
            try:
                self.audit_anchor.advance(request.get("seq"), request.get("chain"))
            except AnchorRefused as exc:
                raise BrokerDenied("bad_request", str(exc)) from exc
        return self.audit_anchor.reply(request.get("id"))

    def _ping(self, request: Message, client: Client) -> Message:
        state = self.state
        return {
            "id": request.get("id"),
            "pid": os.getpid(),
            "backend": state.settings.backend,
            "env": state.settings.active_env,
            "generation": state.generation,
            "error_state": state.last_error,
            "backend_error": state.backend_error,
            # False until a vault, key and agents file were loaded: every call would fail.
            # A later change the broker refuses keeps it serving what it had.
            "serving": state.view is not None,
            # The approvals file cannot be read: gated secrets are refused until it can.
            "approvals_error": state.approvals.broken,
            "policy_refused": state.policy.refused,
            "config_file": str(state.paths.config_file),
            "config_sha256": state.policy.served,
        }

    def _ack(self, request: Message, client: Client) -> None:
        ack = request.get("ack")
        if isinstance(ack, int) and ack > client.acked:
            client.acked = ack
            waiters, self._ack_waiters = self._ack_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _redaction_set(self, request: Message, client: Client) -> Message:
        client.caches = True
        state = self.state
        return {
            "id": request.get("id"),
            "generation": state.generation,
            "values": state.redaction_set(),
            # Seals the proxy's compiled matcher on disk: released as the values are.
            "cache_key": derive_cache_key(self.placeholder_key).hex(),
        }

    def _refresh(self, request: Message, client: Client) -> Message | None:
        # The CLI changed something: apply it before answering, so a request that starts
        # after the command returned cannot see the old value.
        state = self.state
        changed = request.get("changed") or []
        before = self._pushed
        state.refresh()
        state.forget(
            (str(pair[0]), str(pair[1]))
            for pair in changed
            if isinstance(pair, list) and len(pair) == 2
        )
        if request.get("config") is True and self._pushed == before:
            # The CLI edited a config.toml this broker does not serve from (a proxy of
            # another user has its own): every proxy re-reads its file when invalidated,
            # so this push is what puts an allowlist change in force.
            self._invalidate()
        reply = {"id": request.get("id"), "generation": state.generation}
        if state.last_error is not None:
            # The files did not load: the broker still serves what it had before.
            reply["refused"] = state.last_error
        if state.policy.refused is not None:
            reply["policy_refused"] = state.policy.refused
        reply["config_file"] = str(state.paths.config_file)
        reply["config_sha256"] = state.policy.served
        targets = [c for c in self.clients if c.caches and c is not client]
        if self._pushed == before or not targets:
            return reply
        self._spawn(self._answer_when_acknowledged(reply, self._pushed, targets, client))
        return None

    def _approvals(self, request: Message, client: Client) -> Message | None:
        # Approving, enrolling, revoking: the broker's own user only (the human's CLI). A
        # proxy of another user may resolve and hold calls, never approve one.
        if getattr(client, "uid", None) != os.getuid():
            refuse_foreign(self.state.paths, request, getattr(client, "uid", None))
        before = self._pushed
        reply = approvals_op(
            self.state.approvals, self.state.settings, request, client.uid, self.state.holds
        )
        targets = [c for c in self.clients if c.caches and c is not client]
        if self._pushed == before or not targets:
            return reply
        # A revocation is in force once every proxy has dropped what it kept.
        self._spawn(self._answer_when_acknowledged(reply, self._pushed, targets, client))
        return None

    def _watch(self, request: Message, client: Client) -> Message:
        """Stream approvals events to this client: who may list requests may watch them."""
        if getattr(client, "uid", None) != os.getuid():
            refuse_foreign(self.state.paths, {"action": "watch"}, getattr(client, "uid", None))
        listed = self.state.approvals.pending.listed()
        return self.watchers.watch(client, request.get("id"), listed)

    def _config(self, request: Message, client: Client) -> Message:
        # The policy is the config.toml of the broker's own user: another user's CLI (a
        # proxy's, in the separate-broker deployment) edits a file this broker never serves.
        if getattr(client, "uid", None) != os.getuid():
            raise BrokerDenied("not_broker_user", "this broker does not serve your config.toml")
        return config_op(self.state, request, client.uid)

    def _approval_outcome(self, approval_id: str, outcome: str) -> None:
        self._push({"event": "approval", "approval_id": approval_id, "outcome": outcome})

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            work, name="broker-resolve-fetch"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def serve_broker(paths: Paths, socket_path: Path, allowed_uids: frozenset[int]) -> None:
    server = BrokerServer(paths, socket_path, allowed_uids)
    await server.start()
    loop = asyncio.get_running_loop()
    watcher = loop.create_task(server.watch(), name="broker-file-watch")
    syncer = loop.create_task(server.sync(), name="broker-store-sync")
    notifier = loop.create_task(
        tell_approvers(
            server.state.approvals.events, lambda: server.state.settings.notify, paths.audit_dir
        ),
        name="broker-notify-approvers",
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # The proxy that spawned us holds our stdin; when it dies, so do we.
        parent = os.getppid()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if os.getppid() != parent and os.environ.get("BLINDKEY_BROKER_SUPERVISED") == "1":
                break
    finally:
        for task in (watcher, syncer, notifier):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.close()
