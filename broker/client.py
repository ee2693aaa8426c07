"""The proxy's side of the broker socket: one connection, pipelined calls, pushed events.

A protocol rather than streams, and the frames of every call made in one turn of the
event loop leave in one write: with many requests in flight that halves the cost of a
call, which is most of what a warm resolve costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import cast

from blindkey.broker.protocol import (
    PUSH_ID,
    BrokerDenied,
    BrokerUnavailable,
    FrameDecoder,
    Message,
    ProtocolError,
    encode,
)

CALL_TIMEOUT = 5.0


class _Link(asyncio.Protocol):
    """One connection to the broker: parses replies, batches requests."""

    def __init__(self, client: BrokerClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.frames = FrameDecoder()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client._lost(self)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, frame: bytes) -> None:
        self.outgoing.append(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        frames, self.outgoing = self.outgoing, []
        if frames and self.open:
            assert self.transport is not None
            self.transport.write(b"".join(frames))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.client._lost(self)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.frames.feed(data)
        except ProtocolError:
            # Out of step with the broker: no later byte can be trusted to start a frame.
            return self.abort()
        for message in messages:
            self.client._deliver(self, message)


class BrokerClient:
    def __init__(self, socket_path: Path, on_push: Callable[[Message], None] | None = None) -> None:
        self.socket_path = socket_path
        self.on_push = on_push
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._deadlines: dict[int, float] = {}
        # One sweep for every call's timeout: a timer per call would cost more than the call.
        self._sweep: asyncio.TimerHandle | None = None
        self._link: _Link | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self.connection_epoch = 0

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.open

    async def connect(self) -> None:
        async with self._connecting:
            if self.connected:
                return
            loop = asyncio.get_running_loop()
            try:
                _, link = await loop.create_unix_connection(
                    lambda: _Link(self), str(self.socket_path)
                )
            except OSError as exc:
                raise BrokerUnavailable(f"cannot connect to the broker: {exc.strerror}") from exc
            self._link = link
            # Pushes sent while we were away are lost: callers that cache must start over.
            self.connection_epoch += 1

    def _deliver(self, link: _Link, message: Message) -> None:
        request_id = message.get("id")
        if request_id == PUSH_ID:
            if self.on_push is not None:
                self.on_push(message)
            if "ack" in message:
                # on_push has dropped what was cached: the broker may now tell the CLI
                # that the change is in force.
                link.send(encode({"id": PUSH_ID, "op": "ack", "ack": message["ack"]}))
            return
        future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if future is not None and not future.done():
            future.set_result(message)

    def _lost(self, link: _Link) -> None:
        if link is not self._link:
            return
        self._link = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("the broker closed the connection"))

    def _sweep_expired(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for request_id, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[request_id]
                future = self._pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_exception(BrokerUnavailable("the broker did not answer in time"))
        if self._deadlines:
            self._sweep = loop.call_later(min(0.25, CALL_TIMEOUT / 4), self._sweep_expired)

    async def call(self, op: str, **params: object) -> Message:
        if not self.connected:
            await self.connect()
        link = self._link
        if link is None or not link.open:
            raise BrokerUnavailable("the broker is not connected")
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        self._pending[request_id] = future
        self._deadlines[request_id] = loop.time() + CALL_TIMEOUT
        if self._sweep is None:
            self._sweep = loop.call_later(min(0.25, CALL_TIMEOUT / 4), self._sweep_expired)
        link.send(encode({"id": request_id, "op": op, **params}))
        try:
            reply = await future
        finally:
            self._deadlines.pop(request_id, None)
        error = reply.get("error")
        if error is not None:
            raise BrokerDenied(str(error), str(reply.get("message", error)))
        return reply

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        link, self._link = self._link, None
        if link is not None:
            transport = link.transport
            if transport is not None:
                transport.close()
            self._lost_all()
            # let connection_lost run before the loop may close
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)

    def _lost_all(self) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("the broker closed the connection"))
