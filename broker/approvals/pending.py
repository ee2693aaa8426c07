"""Calls that met a gate, waiting for a human: listed by `approvals list` for 10 minutes,
approved with the grant that covers them, denied, or forgotten. In the broker's memory only:
a request is worth nothing once the call that made it is gone."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blindkey.broker.approvals.events import ApprovalEvents
from blindkey.broker.approvals.model import Scope
from blindkey.config.errors import BlindkeyError
from blindkey.config.hosts import origin

PENDING_TTL = 600.0
PENDING_ID = re.compile(r"ap_[0-9a-f]{16}")
# An agent cannot grow the broker's memory by asking again and again, nor push another
# agent's request out: past its own share it is refused, and past the whole cap every new
# request is refused; no request is ever dropped to make room.
MAX_PENDING = 1000
MAX_PENDING_PER_AGENT = 50


@dataclass(frozen=True, slots=True)
class Pending:
    id: str
    agent: str
    secret: str
    env: str
    method: str
    scheme: str
    host: str
    port: int
    path: str
    created: float

    def public(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "secret": self.secret,
            "env": self.env,
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "age_s": int(now - self.created),
            "scheme": self.scheme,
            "port": self.port,
            # What approving it grants: the secret for this scheme, host and port only.
            "covers": origin(self.scheme, self.host, self.port),
        }


class PendingRequests:
    def __init__(
        self,
        clock: Callable[[], float],
        on_outcome: Callable[[str, str], None] | None = None,
        events: ApprovalEvents | None = None,
    ) -> None:
        self.clock = clock
        self._requests: dict[str, Pending] = {}
        # From the broker: pushes the outcome to the proxies waiting on the call.
        self.on_outcome = on_outcome
        self.events = events or ApprovalEvents(clock)
        # Requests a call waited on (X-AS-Wait-Approval): told once, as "held".
        self._held: set[str] = set()

    def tell(self, pending: Pending, outcome: str) -> None:
        """The outcome of a request no longer listed: to the proxies and the watchers."""
        if self.on_outcome is not None:
            self.on_outcome(pending.id, outcome)
        self._publish(outcome, pending)
        self._held.discard(pending.id)

    def _publish(self, kind: str, pending: Pending) -> None:
        fields = pending.public(self.clock())
        fields["approval_id"] = fields.pop("id")
        self.events.publish(kind, {**fields, "held": pending.id in self._held})

    def add(
        self, agent: str, secret: str, env: str, method: str, target: Scope, path: str,
        known: str | None = None, held: bool = False,
    ) -> Pending:  # fmt: skip
        """The pending request for this call; the same call again is the same request.
        `known`: the id a held call had with a broker that restarted since; it is kept
        unless another request has it. `held`: the call waits for the answer."""
        now = self.clock()
        self.forget_old(now)
        scheme, host, port = target
        call = (agent, secret, env, method, scheme, host, port, path)
        for pending in self._requests.values():
            if (pending.agent, pending.secret, pending.env, pending.method, pending.scheme,
                    pending.host, pending.port, pending.path) == call:  # fmt: skip
                self._note_held(pending, held)
                return pending
        mine = sum(1 for pending in self._requests.values() if pending.agent == agent)
        if mine >= MAX_PENDING_PER_AGENT:
            raise BlindkeyError(
                f"agent {agent} already has {mine} calls waiting for a human, the most it may "
                "have: a new one is listed once a human answers one (`blindkey approvals "
                f"list`) or it lapses ({int(PENDING_TTL // 60)} minutes)"
            )
        if len(self._requests) >= MAX_PENDING:
            raise BlindkeyError(
                f"{len(self._requests)} calls of several agents wait for a human, the most "
                "the broker keeps: a new one is listed once a human answers one or it lapses"
            )
        if known is None or known in self._requests:
            known = f"ap_{os.urandom(8).hex()}"
        pending = Pending(
            id=known,
            agent=agent,
            secret=secret,
            env=env,
            method=method[:16],
            scheme=scheme,
            host=host[:255],
            port=port,
            path=path[:512],
            created=now,
        )
        self._requests[pending.id] = pending
        if not self._note_held(pending, held):
            self._publish("pending", pending)
        return pending

    def _note_held(self, pending: Pending, held: bool) -> bool:
        """Tell "held" the first time a call waits on `pending`; True when told."""
        if not held or pending.id in self._held:
            return False
        self._held.add(pending.id)
        self._publish("held", pending)
        return True

    def listed(self) -> list[dict[str, Any]]:
        now = self.clock()
        self.forget_old(now)
        return [{**p.public(now), "held": p.id in self._held} for p in self._requests.values()]

    def get(self, request_id: str) -> Pending:
        self.forget_old(self.clock())
        pending = self._requests.get(request_id)
        if pending is None:
            raise BlindkeyError(
                f"no pending request {request_id} (they are kept 10 minutes); "
                "see `blindkey approvals list`"
            )
        return pending

    def remove(self, request_id: str) -> Pending:
        pending = self.get(request_id)
        del self._requests[request_id]
        return pending

    def settle(self, secret: str, env: str, agent: str, scope: Scope | None) -> None:
        """Requests a new grant covers are approved with it."""
        for request_id, pending in list(self._requests.items()):
            if scope is not None and scope != (pending.scheme, pending.host, pending.port):
                continue
            if (pending.secret, pending.env) == (secret, env) and agent in ("*", pending.agent):
                del self._requests[request_id]
                self.tell(pending, "approved")

    def forget_old(self, now: float) -> None:
        for request_id, pending in list(self._requests.items()):
            if now - pending.created >= PENDING_TTL:
                del self._requests[request_id]
                self.tell(pending, "expired")
