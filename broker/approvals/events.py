"""Approvals as they happen, for whoever must tell the human: the broker's notifier, the
`approvals.watch` op (`blindkey approvals watch`, `blindkey ui`), tests.

In-process (the broker's own loop thread; every approvals change runs there):

    events = approvals.events                  # one ApprovalEvents per Approvals object
    stop = events.subscribe(callback)          # callback(event) for each event from now on
    stop()                                     # no more calls

A callback runs inside the change that published the event, so it must only hand the
event on (put it in a queue, write it to a transport), never wait: a callback that raises
is logged and dropped, and the change goes on.

Over the broker socket (the broker's own user only, as for `approvals list`):

    -> {"id": N, "op": "approvals.watch"}
    <- {"id": N, "watching": true, "pending": [approvals list rows]}    # the snapshot
    <- {"id": N, "event": EVENT}                                        # each one after it

The snapshot and the subscription are taken in one step of the broker's loop, so no event
falls between them. A watcher that stops reading (its write buffer past WATCH_BACKLOG) is
hung up on. broker/link.py's Link.send/receive read such a stream.

An event is a dict: "event" (below), "ts" (RFC 3339); a request's events add "approval_id",
"agent", "secret", "env", "method", "scheme", "host", "port", "path", "covers", "age_s",
"held" (a call waits on it); "locked_out" adds "approver", "until", "source" instead.

    pending     a call met a gate: a new request waits for a human
    held        a call waits on a request (X-AS-Wait-Approval): once per request
    approved    a grant now covers the request
    denied      `blindkey deny` refused it
    expired     nobody answered in 10 minutes
    locked_out  an approver's wrong codes locked them out (5 in 5 minutes)

Names only, never a value: the broker publishes what `approvals list` shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from blindkey.audit.record import rfc3339
from blindkey.broker.protocol import Message, encode

log = logging.getLogger("blindkey.broker")

Event = dict[str, Any]
Subscriber = Callable[[Event], None]
REQUEST_EVENTS = ("pending", "held", "approved", "denied", "expired")
KINDS = (*REQUEST_EVENTS, "locked_out")
# What a human is told about (a decision needs no notice: the human made it, or let it lapse).
NOTICES = ("pending", "held", "locked_out")
WATCH_OP = "approvals.watch"
# A watcher this far behind is hung up on: the broker keeps no unbounded queue for it.
WATCH_BACKLOG = 4 * 2**20
MAX_WATCHERS = 64


class ApprovalEvents:
    """Publish an approvals event to every subscriber, in this thread, now."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)

        def stop() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return stop

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, fields: Event) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown approvals event {kind!r}")
        if not self._subscribers:
            return
        event = {"event": kind, "ts": rfc3339(self.clock()), **fields}
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                # A listener's fault must not undo or stop an approval.
                log.exception("approvals event listener failed; it is dropped")
                if callback in self._subscribers:
                    self._subscribers.remove(callback)


class Transport(Protocol):
    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...


class Watcher(Protocol):
    """A broker connection as the watch op needs it (broker/peer.py's Client)."""

    @property
    def transport(self) -> Any: ...

    def send(self, frame: bytes) -> None: ...


class Watchers:
    """The broker's `approvals.watch` subscribers: connections streamed every event."""

    def __init__(self, events: ApprovalEvents) -> None:
        self.events = events
        self._open: dict[Watcher, Callable[[], None]] = {}

    def __contains__(self, client: object) -> bool:
        return client in self._open

    def watch(self, client: Watcher, request_id: Any, pending: list[dict[str, Any]]) -> Message:
        """Stream events to `client` under `request_id`; the reply is the snapshot."""
        self.prune()
        if client in self._open:
            self._open.pop(client)()
        if len(self._open) >= MAX_WATCHERS:
            return {
                "id": request_id,
                "error": "refused",
                "message": f"{MAX_WATCHERS} watchers are connected, the most the broker feeds",
            }

        def forward(event: Event) -> None:
            transport = client.transport
            if transport is None or transport.is_closing():
                self.drop(client)
                return
            if transport.get_write_buffer_size() > WATCH_BACKLOG:
                log.warning("an approvals watcher stopped reading; hanging up on it")
                self.drop(client)
                transport.abort()
                return
            client.send(encode({"id": request_id, "event": event}))

        self._open[client] = self.events.subscribe(forward)
        return {"id": request_id, "watching": True, "pending": pending}

    def drop(self, client: Watcher) -> None:
        stop = self._open.pop(client, None)
        if stop is not None:
            stop()

    def prune(self) -> None:
        """Forget connections that went away (they are found again at the next event)."""
        for client in list(self._open):
            transport = client.transport
            if transport is None or transport.is_closing():
                self.drop(client)
