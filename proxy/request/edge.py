"""The edge: request ids, the browser and peer gate, the audit record every call gets, the
one function that turns a failure into an error answer, and the dispatch to /health and
/proxy (whose parser hands a spec to the stages in pipeline.py).

It runs on aiohttp's low-level server (`web.Server`) with one dispatch function: two paths
need no Application, router or middleware chain, which cost about 5 µs a request (bench:
a hello-world handler 20.9 µs CPU per request on an Application, 18.3 µs on web.Server,
and each middleware adds a coroutine layer on top).
"""

from __future__ import annotations

import contextlib
import logging
import traceback

from aiohttp import web
from multidict import CIMultiDictProxy

from blindkey.audit.coalesce import Coalescer
from blindkey.audit.record import AuditRecord
from blindkey.broker.protocol import BrokerDenied, BrokerUnavailable, ProtocolError
from blindkey.config.addresses import is_loopback_host
from blindkey.config.errors import BlindkeyError
from blindkey.proxy.connections import ConnectionGuard, peer_address, peer_key
from blindkey.proxy.errors import (
    REQUEST_ID_HEADER,
    STATUS,
    ProxyError,
    error_response,
    next_request_id,
)
from blindkey.proxy.request.forward_proxy import (
    absolute_session,
    absolute_target,
    parse_forwarded,
    tunnel_target,
)
from blindkey.proxy.request.parse import ProxySpec, Target, parse_spec, request_headers
from blindkey.proxy.request.pipeline import forward
from blindkey.proxy.request.recorded import recorded
from blindkey.proxy.request.routes import ROUTE_PREFIX, parse_route, record_url
from blindkey.proxy.runtime import ProxyRuntime
from blindkey.proxy.tls.errors import CaError
from blindkey.proxy.tls.session import Session
from blindkey.proxy.tls.websocket import is_websocket, websocket

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names, not a bind
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.", "ip6-localhost"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

log = logging.getLogger("blindkey.proxy")


def host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Front:
    """The handler aiohttp's server calls for every request."""

    def __init__(
        self,
        runtime: ProxyRuntime,
        own_host: str,
        guard: ConnectionGuard,
        refusals: Coalescer,
        *,
        allow_remote: bool = False,
    ) -> None:
        self.runtime = runtime
        self.guard = guard
        self.refusals = refusals
        self.allowed_hosts = LOOPBACK_NAMES | ({own_host.lower()} - WILDCARD_HOSTS)
        # Bound to loopback, every peer is local: the peer checks are skipped.
        self.bound_remote = not is_loopback_host(own_host)
        self.allow_remote_flag = allow_remote  # `proxy start --allow-remote`, kept over reloads
        self.handling = 0  # calls between arrival and their record

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = next_request_id()
        transport = request.transport
        self.guard.request_started(transport)
        # Every call is one record, opened here and submitted here, whatever ends it.
        record = AuditRecord(
            request_id=request_id,
            method=request.headers.get("X-AS-Method", request.method)[:16],
            url=(
                record_url(self.runtime.settings.routes, request)
                if request.path.startswith(ROUTE_PREFIX)
                else request.headers.get("X-AS-Target-URL", "")[:2048]
            ),
        )
        audited = True
        response: web.StreamResponse | None = None
        self.handling += 1
        try:
            response, audited = await self._route(request, record)
        except Exception as exc:
            error = to_proxy_error(exc)
            record.block(error.code, error.status, error.message)
            vendor = request.path.startswith(ROUTE_PREFIX)
            response = error_response(error, request_id, vendor=vendor)
            if record.agent is None and "X-AS-Agent-Token" in request.headers:
                await self._identify(request.headers["X-AS-Agent-Token"], record)
        finally:
            if record.agent is not None:  # the broker knew its token
                self.guard.identified(transport)
            self.guard.request_finished(transport)
            self.handling -= 1
            if audited and record.agent is None and record.reason != "audit_unavailable":
                # Nobody identified: a flood of these may not fill the disk. Its answer
                # injects nothing, so it need not wait for its record. (While the audit is
                # unavailable nothing reaches the disk: every refusal is kept, in its own
                # record, up to the writer's cap.)
                if response is None:
                    record.cut()
                self.refusals.add(record, peer_key(transport))
            elif audited:
                # Written before the answer is complete; no answer without its record. With
                # no other call under way, none could share its write: written at once.
                response = await recorded(
                    self.runtime.audit, record, response, request, alone=not self.handling
                )
        assert response is not None
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    async def _route(
        self, request: web.BaseRequest, record: AuditRecord
    ) -> tuple[web.StreamResponse, bool]:
        """The answer, and whether it belongs in the audit (every answer does)."""
        transport = request.transport
        connection = self.guard.by_transport.get(transport) if transport is not None else None
        if connection is not None and connection.session is not None:
            # Inside a tunnel blindkey intercepted: the agent proved itself at CONNECT, the
            # Host is the upstream's own.
            session = connection.session
            return await self._forwarded(request, record, session, tunnel_target(request, session))
        remote_peer = self.bound_remote and self._check_peer(request)
        _refuse_pages(request.headers)
        if request.raw_path.startswith(("http://", "https://")):  # HTTP_PROXY: absolute-form
            record.method, record.url = request.method[:16], request.raw_path[:2048]
            session = await absolute_session(self.runtime, request)
            return await self._forwarded(request, record, session, absolute_target(request))
        if not remote_peer:  # another machine names this one as it knows it
            self._check_host(request.headers)
        path = request.path
        if path == "/health" and request.method in ("GET", "HEAD"):
            # Health means serving: a broker that cannot open its vault, key or agents makes
            # the proxy unhealthy (why is for `proxy status`, not for whoever asks here).
            record.method, record.url = request.method, path
            # An audit that cannot be written is no service either.
            if await self.runtime.check_broker() and self.runtime.audit.available:
                record.status = 200
                return web.json_response({"status": "ok"}), True
            record.status = 503
            return web.json_response({"status": "unavailable"}, status=503), True
        spec: ProxySpec | None = None
        if path.startswith(ROUTE_PREFIX):
            record.method = request.method[:16]
            spec, raw = parse_route(self.runtime.settings.routes, request)
            record.url = spec.target.original[:2048]
            token_sent = spec.token is not None
        elif path == "/proxy":
            token_sent = "X-AS-Agent-Token" in request.headers
        else:
            raise ProxyError("bad_request", "blindkey serves /proxy, /r/NAME/... and /health only")
        proxy_settings = self.runtime.settings.proxy
        if (
            remote_peer or self.allow_remote_flag or proxy_settings.allow_remote
        ) and not token_sent:
            # require_agent_token = false is for local callers only; with remote callers
            # allowed, nobody is anonymous.
            raise ProxyError(
                "unauthenticated",
                "an X-AS-Agent-Token is required: this proxy accepts calls from other machines",
            )
        if "Expect" in request.headers:
            await _expect(request)
        self._check_audit()
        if spec is None:
            raw = request_headers(request)
            spec = parse_spec(request.method, raw)
        return await forward(self.runtime, request, spec, raw, record), True

    async def _forwarded(
        self, request: web.BaseRequest, record: AuditRecord, session: Session, target: Target
    ) -> tuple[web.StreamResponse, bool]:
        """Proxy mode: a request sent to blindkey as the caller's proxy."""
        record.agent, record.env = session.agent, session.env
        if "Expect" in request.headers:  # before its body is read (a text body is)
            await _expect(request)
        spec, headers = await parse_forwarded(
            self.runtime.settings, request, session, target, record
        )
        self._check_audit()
        if is_websocket(request):
            return await websocket(self.runtime, request, spec, headers, record), True
        return await forward(self.runtime, request, spec, headers, record), True

    def _check_audit(self) -> None:
        if not self.runtime.audit.available:
            raise ProxyError(
                "audit_unavailable",
                "blindkey cannot write its audit (disk full or file unwritable); nothing is "
                "injected until it can: retry later",
            )

    async def _identify(self, token: str, record: AuditRecord) -> None:
        """Name the agent of a call refused before it was asked who it is (a malformed
        call, say): an agent's refusals keep a record each, only callers without a valid
        token are counted together. The answer is kept, so an agent's costs nothing."""
        with contextlib.suppress(BlindkeyError):
            record.agent, record.env = await self.runtime.authoriser.identify(token)

    def _check_peer(self, request: web.BaseRequest) -> bool:
        """True for a caller on another machine that may call; refuses one that may not."""
        address = peer_address(request.transport)
        if address is not None and address.is_loopback:
            return False
        proxy_settings = self.runtime.settings.proxy
        allowed = self.allow_remote_flag or proxy_settings.allow_remote
        if (
            address is None
            or not allowed
            or not any(address in network for network in proxy_settings.allowed_peers)
        ):
            raise ProxyError(
                "forbidden_origin",
                f"calls from {address or 'an unknown address'} are not accepted: a human can "
                "list the caller's network in [proxy] allowed_peers",
            )
        return True

    def _check_host(self, headers: CIMultiDictProxy[str]) -> None:
        host = headers.get("Host")
        if host is not None and host_name(host) not in self.allowed_hosts:
            raise ProxyError(
                "forbidden_origin", "the Host header must name the proxy's loopback address"
            )


def _refuse_pages(headers: CIMultiDictProxy[str]) -> None:
    # What a web page can make a browser send here, and what gives each away:
    # - every cors-mode fetch/XHR and every POST (fetch, form, beacon) carries `Origin`.
    #   A cors request that sets X-AS-* headers is first preflighted with an OPTIONS
    #   that carries it too; refusing the preflight means the request is never sent.
    # - GETs without cors (no-cors fetch, <img>, <script>, links, form GETs, redirects)
    #   carry no Origin, but do carry `Sec-Fetch-Site: cross-site | same-site |
    #   same-origin`: browsers send Fetch Metadata to every potentially trustworthy URL,
    #   which 127.0.0.1, [::1] and localhost are, and no script can set or drop it.
    # - `Sec-Fetch-Site: none` means no page started the request: the user typed the URL
    #   or opened a bookmark. Such a GET cannot carry X-AS-* headers; it passes, as curl.
    # - DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is
    #   same-origin with us, so it may set any header; http://evil.example is not a
    #   trustworthy URL, so it sends no Sec-Fetch-*, and its GETs no Origin. Only its
    #   `Host` gives it away, hence the Host check.
    # Sec-Fetch-Mode and Sec-Fetch-Dest alone prove nothing: Node's fetch (undici) sends
    # `Sec-Fetch-Mode: cors` on every request, and most JavaScript agents run on Node.
    # Not covered: a no-cors GET with neither header, from a browser without Fetch
    # Metadata (before Chrome 76, Firefox 90, Safari 16.4) or to http://ip6-localhost,
    # which is no trustworthy URL. Like every no-cors request it carries no X-AS-*
    # header and no agent token, so /proxy cannot act on it.
    if "Origin" in headers or any(site != "none" for site in headers.getall("Sec-Fetch-Site", ())):
        raise ProxyError(
            "forbidden_origin",
            "requests made by a web page (Origin, Sec-Fetch-Site) are refused",
        )


async def _expect(request: web.BaseRequest) -> None:
    """`Expect: 100-continue`: tell the agent to send its body (the upstream is not asked)."""
    if request.headers["Expect"].strip().lower() != "100-continue":
        raise ProxyError("bad_request", "the only Expect blindkey knows is 100-continue")
    if request.version >= (1, 1) and request.writer is not None:
        await request.writer.write(CONTINUE)
        # The interim answer is not part of the response's size.
        request.writer.output_size = 0


def to_proxy_error(exc: Exception) -> ProxyError:
    """The one place a failure becomes an error of INTERFACE.md's table.

    Every exception the stages raise derives from BlindkeyError and is mapped here, the
    upstream client's already at the send stage's boundary (proxy/request/send.py;
    tests/proxy/test_error_mapping.py checks each class's code); anything else is a bug of
    blindkey's own: logged with its traceback, answered 500 `internal_error` (still JSON,
    still with the request id) and recorded `blocked`.
    """
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, BrokerDenied):
        # A rule of the request names itself (`detail`); a rate says when to retry.
        fields = {"detail": exc.detail} if exc.detail is not None else None
        code = exc.code if exc.code in STATUS else "bad_request"
        return ProxyError(code, str(exc), fields=fields, retry_after=exc.retry_after)
    if isinstance(exc, BrokerUnavailable | ProtocolError):
        return ProxyError(
            "broker_unavailable",
            "the secret broker is not answering; it is being restarted, retry shortly",
        )
    if isinstance(exc, web.HTTPException):  # raised by aiohttp itself, e.g. on a bad body
        return ProxyError("bad_request", exc.reason)
    if isinstance(exc, CaError):  # proxy mode, with its CA missing or damaged: said, not a bug
        return ProxyError("internal_error", f"proxy mode cannot answer TLS: {exc}", close=True)
    # Where, not what: the exception's own text could hold anything the code had in hand.
    where = "".join(traceback.format_tb(exc.__traceback__))
    log.error("internal error %s at:\n%s", type(exc).__name__, where)
    return ProxyError(
        "internal_error",
        "blindkey failed on its own (a bug, not the call's fault); the proxy's log has the "
        "details under this request id",
        close=True,
    )
