"""CONNECT: proxy mode's door. A program told `HTTPS_PROXY=http://agent:TOKEN@127.0.0.1:8765`
asks for a tunnel; the agent is known by its token (407 without one), the host must be on
the allowlist (403 before a byte leaves), and then one of two things happens:

- a host a secret this agent may use is bound to: blindkey answers the TLS itself, with a
  leaf from its own CA, and every request inside goes through the stages of /proxy
  (the session is looked up by the TLS transport: proxy/request/forward_proxy.py);
- any other allowlisted host: a blind tunnel to an address the egress guard vetted, with
  one record (`event: tunnel`) of its bytes each way when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING

from aiohttp.web_protocol import RequestHandler

from blindkey.audit.events import event_record
from blindkey.audit.record import AuditRecord
from blindkey.config.errors import BlindkeyError
from blindkey.config.hosts import ip_literal
from blindkey.proxy.errors import (
    PROXY_AUTH_STATUS,
    PROXY_AUTHENTICATE,
    REQUEST_ID_HEADER,
    ProxyError,
    error_body,
    next_request_id,
)
from blindkey.proxy.request.edge import to_proxy_error
from blindkey.proxy.request.forward_proxy import identify, placeholders_of
from blindkey.proxy.request.parse import Target
from blindkey.proxy.tls.blind import IdleDeadline, Pipe
from blindkey.proxy.tls.head import ConnectHead, head_end, no_token, parse_head
from blindkey.proxy.tls.session import Session, bound_secrets
from blindkey.proxy.upstream import BlockedAddressError

if TYPE_CHECKING:
    from blindkey.proxy.connections import GuardedConnection
    from blindkey.proxy.runtime import ProxyRuntime
    from blindkey.proxy.tls.ca import LeafCache

ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
_REASONS = {400: "Bad Request", 403: "Forbidden", 407: "Proxy Authentication Required",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}  # fmt: skip


def refusal(error: ProxyError, request_id: str) -> bytes:
    status = PROXY_AUTH_STATUS if error.code == "unauthenticated" else error.status
    body = error_body(error, request_id)
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"{REQUEST_ID_HEADER}: {request_id}",
        "Connection: close",
    ]
    if status == PROXY_AUTH_STATUS:
        lines.append(f"Proxy-Authenticate: {PROXY_AUTHENTICATE}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Door(asyncio.Protocol):
    """Reads one connection's CONNECT head, then decides (the connection's protocol stays
    GuardedConnection, which hands the bytes here until the decision is made)."""

    def __init__(
        self,
        runtime: ProxyRuntime,
        connection: GuardedConnection,
        leaves: Callable[[], LeafCache],
        make_handler: Callable[[], RequestHandler],
    ) -> None:
        self.runtime = runtime
        self.connection = connection
        self.leaves = leaves
        self.make_handler = make_handler
        self.buffer = b""
        self.deciding = False
        self.pipe: Pipe | None = None
        self.bytes_up = 0
        self.task: asyncio.Task[None] | None = None
        self.deciding_done = False

    # --- the protocol GuardedConnection forwards to ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.bytes_up += len(data)
            self.pipe.send(data)
            return
        if self.deciding:
            self.buffer += data
            return
        self.buffer += data
        try:
            end = head_end(self.buffer)
        except ProxyError as exc:
            self.deciding = True
            self._spawn(self._refuse_unread(exc))
            return
        if end is None:
            return
        raw, self.buffer = self.buffer[:end], self.buffer[end:]
        self.deciding = True
        transport = self.connection.transport
        assert transport is not None
        transport.pause_reading()  # nothing more is read until the way is chosen
        self._spawn(self._decide(raw))

    def eof_received(self) -> bool | None:
        if self.pipe is not None:
            self.pipe.write_eof()
            return True
        return None

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.pause_reading()

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe is not None:
            self.pipe.close()
        if self.task is not None and not self.deciding_done:
            self.task.cancel()

    # --- deciding -------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        self.task = asyncio.get_running_loop().create_task(work)

    async def _refuse_unread(self, error: ProxyError) -> None:
        record = AuditRecord(request_id=next_request_id(), method="CONNECT", url="")
        await self._refuse(record, error)

    async def _decide(self, raw: bytes) -> None:
        record = AuditRecord(request_id=next_request_id(), method="CONNECT", url="")
        self.connection.guard.request_started(self.connection.transport)
        try:
            head = parse_head(raw)
            record.url, record.host = head.authority[:2048], head.host
            session = await self._admit(head, record)
            if session is None:
                await self._tunnel(head, record)
            else:
                await self._open_tls(session, record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is an error answer and a record
            await self._refuse(record, to_proxy_error(exc))
        finally:
            self.deciding_done = True

    async def _admit(self, head: ConnectHead, record: AuditRecord) -> Session | None:
        runtime = self.runtime
        token = head.token
        if token is None:
            raise no_token()
        agent, env = await identify(runtime, token)
        record.agent, record.env = agent, env
        target = Target("https", head.host, head.port, "/", f"https://{head.authority}/")
        record.rule = runtime.egress.check(target).text
        if not runtime.audit.available:
            raise ProxyError(
                "audit_unavailable",
                "blindkey cannot write its audit; nothing is tunnelled until it can",
            )
        names = bound_secrets(runtime.settings, agent, head.host, head.port)
        if not names:
            return None
        found = await placeholders_of(runtime, env)
        return Session(head.host, head.port, token, agent, env, found)

    async def _refuse(self, record: AuditRecord, error: ProxyError) -> None:
        status = PROXY_AUTH_STATUS if error.code == "unauthenticated" else error.status
        record.block(error.code, status)
        # No answer before its record (as the edge): a held record means the audit failed.
        if await self.runtime.audit.commit(record) is not None:
            error = ProxyError("audit_unavailable", "blindkey cannot write its audit")
        transport = self.connection.transport
        if transport is not None and not transport.is_closing():
            transport.write(refusal(error, record.request_id))
            transport.close()
        self.connection.guard.request_finished(transport)

    # --- the two ways on ------------------------------------------------------------------

    async def _tunnel(self, head: ConnectHead, record: AuditRecord) -> None:
        runtime = self.runtime
        addresses = await self._vetted(head.host, head.port)
        loop = asyncio.get_running_loop()
        timeout = runtime.settings.limits.upstream_connect_timeout
        pipe: Pipe | None = None
        for address in addresses:
            with contextlib.suppress(OSError, TimeoutError):
                _, pipe = await asyncio.wait_for(
                    loop.create_connection(lambda: Pipe(self.connection), address, head.port),
                    timeout,
                )
                record.peer = _peer(address, head.port)
                break
        if pipe is None:
            raise ProxyError("upstream_error", f"cannot connect to {head.authority}")
        transport = self.connection.transport
        assert transport is not None
        started = time.perf_counter()
        self.pipe = pipe
        pipe.finished = self._tunnel_done(record, started)
        settings = runtime.settings
        pipe.deadline = IdleDeadline(
            settings.proxy.upstream_timeout, settings.limits.keepalive_idle_timeout, pipe.expire
        )
        transport.write(ESTABLISHED)
        if self.buffer:
            self.bytes_up += len(self.buffer)
            pipe.send(self.buffer)
            self.buffer = b""
        transport.resume_reading()

    def _tunnel_done(self, record: AuditRecord, started: float) -> Callable[[int], None]:
        def done(bytes_down: int) -> None:
            transport = self.connection.transport
            if transport is not None:
                transport.close()
            self.connection.guard.request_finished(transport)
            self.runtime.audit.submit(
                event_record(
                    "tunnel",
                    {
                        "request_id": record.request_id,
                        "agent": record.agent,
                        "env": record.env,
                        "host": record.host,
                        "port": int(record.url.rpartition(":")[2] or 0),
                        "peer": record.peer,
                        "rule": record.rule,
                        "bytes_up": self.bytes_up,
                        "bytes_down": bytes_down,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            )

        return done

    async def _vetted(self, host: str, port: int) -> list[str]:
        """The addresses the egress guard lets this host be reached at: an allowlisted name
        that resolves only to private addresses is refused as /proxy refuses it; a literal
        on the allowlist is dialled as /proxy dials it."""
        if ip_literal(host) is not None:
            return [host]
        pool = self.runtime.upstream
        assert pool is not None
        try:
            results = await pool.resolver.resolve(host, port, socket.AF_UNSPEC)
        except BlockedAddressError:
            raise ProxyError(
                "blocked_address",
                f"{host} resolves only to addresses blindkey does not dial (private, "
                "loopback, link-local or reserved); a human can permit a range with "
                "[allowlist] private_ranges",
            ) from None
        except OSError:
            raise ProxyError("upstream_error", f"cannot resolve {host}") from None
        addresses = list(dict.fromkeys(r["host"] for r in results))
        # A name for this proxy (loopback permitted by private_ranges, and its port): a
        # tunnel into itself, and then another inside that one, is a loop, not an upstream.
        if port == self.runtime.egress.own_port:
            addresses = [a for a in addresses if not _loopback(a)]
            if not addresses:
                raise ProxyError("blocked_address", "the proxy will not call itself")
        return addresses

    async def _open_tls(self, session: Session, record: AuditRecord) -> None:
        if self.buffer:  # a ClientHello sent before the 200: start_tls cannot be given it
            raise ProxyError(
                "bad_request", "bytes came before the tunnel was open: wait for the 200"
            )
        transport = self.connection.transport
        assert transport is not None
        context: ssl.SSLContext = self.leaves().context(session.host)
        transport.write(ESTABLISHED)
        self.connection.guard.request_finished(transport)
        loop = asyncio.get_running_loop()
        timeout = self.runtime.settings.limits.header_read_timeout
        try:
            tls = await loop.start_tls(
                transport,
                self.connection,
                context,
                server_side=True,
                ssl_handshake_timeout=timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            # The client did not take our certificate (no CA bundle?): recorded, then gone.
            transport.close()
            record.block("bad_request", 400)
            with contextlib.suppress(BlindkeyError):
                await self.runtime.audit.commit(record)
            return
        if tls is None:
            return
        early, self.buffer = self.buffer, b""
        self.connection.go_inside(tls, self.make_handler(), session, early)


def _peer(address: str, port: int) -> str:
    """As a /proxy record's `peer` names the address dialled (proxy/request/egress.py)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _loopback(address: str) -> bool:
    found = ip_literal(address)
    return found is not None and (found.is_loopback or found.is_unspecified)
