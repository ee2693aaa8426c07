"""One connection to the broker, as the broker sees it: admitted by peer uid and counts,
frames read and answered in one write, replies batched so a push never overtakes them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from blindkey.broker.protocol import FrameDecoder, Message, ProtocolError, encode
from blindkey.broker.sockets import ConnectionLimits, PeerCounts, peer_credentials
from blindkey.broker.state import BrokerState

log = logging.getLogger("blindkey.broker")


class Host(Protocol):
    """What a connection needs of the server it belongs to (BrokerServer)."""

    allowed_uids: frozenset[int]
    state: BrokerState
    limits: ConnectionLimits
    peers: PeerCounts
    clients: set[Client]

    @property
    def releaser(self) -> Any: ...

    def clock(self) -> float: ...

    def dispatch(self, request: Message, client: Client) -> Message | None: ...


def peer_uid(sock: Any) -> int:
    return peer_credentials(sock)[1]


class Client(asyncio.Protocol):
    """One connection to the broker (a proxy, the CLI, a supervisor's ping), as it sees it."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.frames = FrameDecoder()
        # A client that resolves may cache answers until told otherwise (the proxy does):
        # a change is in force only once every such client has acknowledged it.
        self.caches = False
        self.acked = 0
        # Frames for this client while a read is being answered: they leave together, in
        # order, so a push never overtakes a reply computed before it.
        self.batch: list[bytes] | None = None
        self.pid = 0
        self.active = server.clock()  # when it last sent anything

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        pid, uid = peer_credentials(transport.get_extra_info("socket"))
        self.uid = uid
        # An agent's user ([broker] release_uids) may ask for released values only.
        self.release_only = uid not in self.server.allowed_uids
        if self.release_only and uid not in self.server.state.settings.broker.release_uids:
            log.warning("refused broker connection from uid %d", uid)
            transport.close()
            return
        if not self.server.peers.admit(self.server.limits, pid, uid):
            transport.close()
            return
        self.pid = pid
        self.transport = transport
        self.server.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:  # admitted: its place is given back
            self.server.peers.give_back(self.pid, self.uid)
        self.server.clients.discard(self)
        self.transport = None
        self.server.releaser.client_lost(self)

    # A client that does not read its replies stops being read from.
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def send(self, frame: bytes) -> None:
        if self.batch is not None:
            self.batch.append(frame)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.active = self.server.clock()
        try:
            requests = self.frames.feed(data)
        except ProtocolError as exc:
            log.warning("dropping client: %s", exc)
            self.transport.abort()
            return
        replies: list[bytes] = []
        self.batch = replies
        try:
            for request in requests:
                reply = self.server.dispatch(request, self)
                if reply is not None:
                    replies.append(encode(reply))
        finally:
            self.batch = None
        if replies and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(replies))
