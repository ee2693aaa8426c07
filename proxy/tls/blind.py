"""A blind tunnel's far side and its idle deadline.

blindkey cannot see requests inside a tunnel it does not intercept, so "idle" is read from
the bytes: after the client spoke last, the upstream is owed an answer and gets
`upstream_timeout` (as a read of /proxy does); after the upstream spoke last, the client's
next request is awaited for `keepalive_idle_timeout` (as an idle keep-alive connection). A
tunnel silent for longer is closed both ways, so an idle socket cannot hold a connection
slot (an in-tunnel connection is never evicted) or an upstream socket forever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from blindkey.proxy.connections import GuardedConnection


class IdleDeadline:
    """One timer per tunnel, moved on lazily: bytes only note the time, and the timer, when
    it fires early, sets itself again for what is left."""

    def __init__(self, answer_wait: float, between: float, expire: Callable[[], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.answer_wait, self.between = answer_wait, between
        self.expire = expire
        self.last = self.loop.time()
        self.upstream_owes = False
        self.handle: asyncio.TimerHandle | None = self.loop.call_later(between, self._check)

    def moved(self, *, up: bool) -> None:
        self.last = self.loop.time()
        self.upstream_owes = up

    def _check(self) -> None:
        limit = self.answer_wait if self.upstream_owes else self.between
        left = self.last + limit - self.loop.time()
        if left > 0:
            self.handle = self.loop.call_later(left, self._check)
            return
        self.handle = None
        self.expire()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class Pipe(asyncio.Protocol):
    """The upstream side of a blind tunnel."""

    def __init__(self, client: GuardedConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.bytes_down = 0
        self.finished: Callable[[int], None] | None = None
        self.closed = False
        self.deadline: IdleDeadline | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes) -> None:
        if self.deadline is not None:
            self.deadline.moved(up=True)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            with contextlib.suppress(OSError):
                self.transport.write_eof()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.bytes_down += len(data)
        if self.deadline is not None:
            self.deadline.moved(up=False)
        client = self.client.transport
        if client is not None and not client.is_closing():
            client.write(data)

    def eof_received(self) -> bool | None:
        client = self.client.transport
        if client is not None and client.can_write_eof():
            with contextlib.suppress(OSError):
                client.write_eof()
            return True
        return None

    def pause_writing(self) -> None:
        client = self.client.transport
        if client is not None:
            client.pause_reading()

    def resume_writing(self) -> None:
        client = self.client.transport
        if client is not None:
            client.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def expire(self) -> None:
        """Silent past its deadline: the upstream side is closed, and its end closes the
        client's side after the tunnel's record (as on any end)."""
        self.client.guard.timed_out += 1
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.deadline is not None:
            self.deadline.cancel()
        if self.finished is not None:
            self.finished(self.bytes_down)
