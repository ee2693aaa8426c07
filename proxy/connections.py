"""Connection-level limits aiohttp does not have: a cap on open connections that idle
connections cannot exhaust, and deadlines for idle connections and for a request's headers
so neither keep-alive hoarders nor slowloris clients can hold sockets."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from blindkey.audit.coalesce import Coalescer
from blindkey.audit.record import AuditRecord
from blindkey.proxy.errors import ProxyError, error_response, next_request_id
from blindkey.proxy.tls.head import is_connect
from blindkey.proxy.tls.session import Session

# An idle connection younger than this is not closed to make room (its answer may still be
# leaving: the guard hears of a request's end when the handler returns).
MIN_IDLE_TO_EVICT = 0.25

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def peer_address(transport: asyncio.BaseTransport | None) -> Address | None:
    """The caller's address; an IPv4 caller of a dual-stack listener (`--host ::`) arrives
    as ::ffff:a.b.c.d and is given back as the IPv4 address it is."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    try:
        address = ipaddress.ip_address(peer[0]) if peer else None
    except (ValueError, TypeError, IndexError):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_key(transport: asyncio.BaseTransport | None) -> str:
    """Whose calls a record of an unidentified caller is counted with: every loopback
    address is one local caller."""
    address = peer_address(transport)
    if address is None:
        return "unknown"
    return "local" if address.is_loopback else str(address)


class ConnectionGuard:
    """Counts connections, closes those that stall, and makes room for new callers.

    A connection is in one of three phases: idle (open, no request bytes yet: just accepted
    or between keep-alive requests), reading a request's headers, or in a request. Idle and
    header phases each have a deadline (`idle_timeout` for keep-alive, `header_timeout` for
    a new connection and for headers). Deadlines are kept in dicts and swept a few times
    per second rather than a timer per request (bench: about 2 µs a request saved).

    At the cap, a new connection is not refused while another can make room. Connections
    that never carried a request from an identified agent (a valid token) go first: the
    idlest idle one, else the oldest still reading its headers; only then the idlest idle
    agent connection. So any local process can hold at most the slots agents leave free:
    half-sent heads and hoarded sockets give way to every new caller, and an agent whose
    head arrives promptly is served (an agent in a request is never evicted).
    """

    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        idle_timeout: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock`: what ages connections and their deadlines (the event loop's clock
        unless a test moves time on); the sweeps still run on the loop's timers."""
        self.clock = clock
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = header_timeout if idle_timeout is None else idle_timeout
        self.active = 0
        self.refused = 0
        self.timed_out = 0
        self.evicted = 0
        self.by_transport: dict[asyncio.BaseTransport, GuardedConnection] = {}
        # Connections waiting for a request's headers, with their deadline.
        self.waiting: dict[GuardedConnection, float] = {}
        # Idle connections, idlest first (insertion order), with (since, deadline).
        self.idle: dict[GuardedConnection, tuple[float, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _now(self) -> float:
        if self.clock is not None:
            return self.clock()
        return self._loop.time() if self._loop is not None else 0.0

    def _schedule(self) -> None:
        assert self._loop is not None
        shortest = min(self.header_timeout, self.idle_timeout)
        interval = min(max(shortest / 4, 0.01), 1.0)
        self._sweeper = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        now = self._now()
        expired = [c for c, deadline in self.waiting.items() if deadline <= now]
        expired += [c for c, (_, deadline) in self.idle.items() if deadline <= now]
        for connection in expired:
            self.waiting.pop(connection, None)
            self.idle.pop(connection, None)
            connection.expire()
        self._schedule()

    def admit(self) -> bool:
        """Room for one more connection: at the cap, close one that can make room, if any."""
        if self.active < self.max_connections:
            return True
        connection = self._evictable()
        if connection is None:
            self.refused += 1
            return False
        self.idle.pop(connection, None)
        self.waiting.pop(connection, None)
        self.evicted += 1
        connection.evict()
        return True

    def _evictable(self) -> GuardedConnection | None:
        # Dicts keep insertion order: the first found is the idlest (or the oldest head).
        now = self._now()
        trusted_idle: GuardedConnection | None = None
        for connection, (since, _) in self.idle.items():
            if not connection.trusted:
                return connection  # at most a refusal of its last call is cut short
            # One that went idle an instant ago may still be writing its last answer.
            if trusted_idle is None and now - since >= MIN_IDLE_TO_EVICT:
                trusted_idle = connection
        for connection in self.waiting:
            if not connection.trusted:
                return connection
        return trusted_idle

    def went_idle(self, connection: GuardedConnection, timeout: float) -> None:
        self.waiting.pop(connection, None)
        now = self._now()
        self.idle[connection] = (now, now + timeout)

    def expect_headers(self, connection: GuardedConnection) -> None:
        accepted = self.idle.pop(connection, None)
        if connection not in self.waiting:
            deadline = self._now() + self.header_timeout
            if accepted is not None and not connection.requests:
                # A new connection's first head is due header_timeout after the accept, not
                # after its first byte: silence and then a trickle do not add up to twice.
                deadline = min(deadline, accepted[1])
            self.waiting[connection] = deadline

    def forget(self, connection: GuardedConnection) -> None:
        self.waiting.pop(connection, None)
        self.idle.pop(connection, None)

    @property
    def in_flight(self) -> int:
        # An intercepted tunnel is in the map twice (its TCP and its TLS transport).
        return sum(1 for c in set(self.by_transport.values()) if c.in_request)

    async def drained(self) -> None:
        """Return once no request is in progress (the caller bounds the wait)."""
        if self.in_flight:
            self._drained = asyncio.Event()
            await self._drained.wait()

    def cut_in_flight(self) -> int:
        """Close every connection still in a request (shutdown, after the drain)."""
        cut = [c for c in set(self.by_transport.values()) if c.in_request]
        for connection in cut:
            if connection.transport is not None:
                connection.transport.abort()
        return len(cut)

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        connection = self.by_transport.get(transport) if transport is not None else None
        if connection is not None:
            connection.in_request = True
            connection.requests += 1
            self.forget(connection)

    def identified(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection carried a request of an agent with a valid token: it keeps its
        slot over those of callers that never showed one."""
        connection = self.by_transport.get(transport) if transport is not None else None
        if connection is not None:
            connection.trusted = True

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        connection = self.by_transport.get(transport) if transport is not None else None
        if connection is not None:
            connection.in_request = False
            self.went_idle(connection, self.idle_timeout)
        if self._drained is not None and not self.in_flight:  # only while shutting down
            self._drained.set()


class JsonErrorHandler(RequestHandler):
    """aiohttp's protocol, answering requests its parser rejects (too many or too large
    headers, bad framing) with the same JSON error and audit record as every other
    refusal."""

    __slots__ = ("refusals",)

    def __init__(
        self, server: web.Server, *, refusals: Coalescer | None = None, **settings: Any
    ) -> None:
        # `settings`: what web.Server() would give aiohttp's own protocol (its `_kwargs`,
        # and the loop); pinned by tests/proxy/test_aiohttp_internals.py.
        super().__init__(server, **settings)
        self.refusals = refusals

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400:
            return super().handle_error(request, status, exc, message)
        reason = type(exc).__name__ if exc is not None else "malformed request"
        error = ProxyError("bad_request", f"malformed HTTP request ({reason})", close=True)
        request_id = next_request_id()
        if self.refusals is not None:
            # What the parser made of the request line before it gave up, if anything. No
            # agent was identified: its record is one of those a flood may not multiply.
            record = AuditRecord(request_id=request_id, method=request.method[:16], url="")
            record.block(error.code, error.status)
            self.refusals.add(record, peer_key(self.transport))
        return error_response(error, request_id)


class GuardedConnection(asyncio.Protocol):
    """Wraps aiohttp's protocol: counts the connection and times its idle and header phases.

    The header clock starts when bytes of a new request arrive and stops when the
    application sees the request (`ConnectionGuard.request_started`).
    """

    def __init__(
        self,
        inner: RequestHandler,
        guard: ConnectionGuard,
        door: Callable[[GuardedConnection], asyncio.Protocol] | None = None,
    ) -> None:
        self.inner: asyncio.Protocol = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        # Proxy mode: the first bytes say whether this is a CONNECT (Door) or not (aiohttp).
        self.door = door
        self.sniffed: bytes | None = b"" if door is not None else None
        # An intercepted tunnel: its TLS transport, and what its requests are known by.
        self.inside: asyncio.Transport | None = None
        self.session: Session | None = None
        self.in_request = False
        self.counted = False
        self.requests = 0
        self.trusted = False  # a request on it came from an identified agent

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, base)
        if not self.guard.admit():
            transport.abort()
            return
        self.counted = True
        self.guard.active += 1
        self.transport = transport
        self.guard.by_transport[transport] = self
        self.inner.connection_made(transport)
        self.guard.went_idle(self, self.guard.header_timeout)

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.guard.active -= 1

    def expire(self) -> None:
        if self.transport is not None and not self.in_request:
            self.guard.timed_out += 1
            self.transport.close()

    def evict(self) -> None:
        """Closed to make room: counted out now, since the close completes later."""
        self._uncount()
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.sniffed is not None:
            data = self._sniff(data)
            if not data:
                return
        if not self.in_request:
            self.guard.expect_headers(self)
        self.inner.data_received(data)

    def _sniff(self, data: bytes) -> bytes:
        seen = self.sniffed + data if self.sniffed else data
        verdict = is_connect(seen)
        if verdict is None:
            self.sniffed = seen
            return b""
        self.sniffed = None
        if verdict and self.door is not None and isinstance(self.inner, RequestHandler):
            # aiohttp saw the connection open but no byte of it: it lets go, without closing
            # the transport it holds (no longer its own).
            self.inner.transport = None
            self.inner.connection_lost(None)
            self.inner = self.door(self)
        return seen

    def go_inside(
        self, tls: asyncio.Transport, handler: RequestHandler, session: Session, early: bytes
    ) -> None:
        """An intercepted tunnel's TLS is up: aiohttp reads the requests inside it (`early`:
        what came with the end of the handshake, before this)."""
        self.inside, self.session = tls, session
        self.inner = handler
        self.guard.by_transport[tls] = self
        handler.connection_made(tls)
        if early:
            self.guard.expect_headers(self)
            handler.data_received(early)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.forget(self)
        if self.transport is None:
            return  # refused at the door: aiohttp never saw it
        self._uncount()
        self.guard.by_transport.pop(self.transport, None)
        if self.inside is not None:
            self.guard.by_transport.pop(self.inside, None)
        self.inner.connection_lost(exc)
