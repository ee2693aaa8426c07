"""The HTTP front: request ids, the browser gate, /health and /proxy.

It runs on aiohttp's low-level server (`web.Server`) with one dispatch function: two paths
need no Application, router or middleware chain, which cost about 5 µs a request (bench:
a hello-world handler 20.9 µs CPU per request on an Application, 18.3 µs on web.Server,
and each middleware adds a coroutine layer on top).
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from multidict import CIMultiDictProxy

from blindkey.audit.record import AuditRecord
from blindkey.config.model import is_loopback_host
from blindkey.proxy.connections import ConnectionGuard
from blindkey.proxy.errors import REQUEST_ID_HEADER, ProxyError, error_response, next_request_id
from blindkey.proxy.pipeline import handle_proxy
from blindkey.proxy.runtime import ProxyRuntime

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names, not a bind
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.", "ip6-localhost"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
        *,
        allow_remote: bool = False,
    ) -> None:
        self.runtime = runtime
        self.guard = guard
        self.allowed_hosts = LOOPBACK_NAMES | ({own_host.lower()} - WILDCARD_HOSTS)
        # Bound to loopback, every peer is local: the peer checks are skipped.
        self.bound_remote = not is_loopback_host(own_host)
        self.allow_remote_flag = allow_remote  # `proxy start --allow-remote`, kept over reloads

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        request_id = next_request_id()
        transport = request.transport
        self.guard.request_started(transport)
        try:
            response = await self._route(request, request_id)
        except ProxyError as exc:
            # /proxy records its own refusals; these are the front's (a browser, a bad path),
            # and a page probing the proxy is what a human reading the audit should see.
            self._record_refusal(request, request_id, exc)
            return error_response(exc, request_id)
        except web.HTTPException as exc:  # raised by aiohttp itself, e.g. on a bad body
            return error_response(ProxyError("bad_request", exc.reason), request_id)
        finally:
            self.guard.request_finished(transport)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    async def _route(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        remote_peer = self.bound_remote and self._check_peer(request)
        if not remote_peer:
            self._gate(request.headers)
        elif "Origin" in request.headers or "Sec-Fetch-Site" in request.headers:
            raise ProxyError("forbidden_origin", "requests made by a web page are refused")
        proxy_settings = self.runtime.settings.proxy
        if (
            (remote_peer or self.allow_remote_flag or proxy_settings.allow_remote)
            and request.path == "/proxy"
            and "X-AS-Agent-Token" not in request.headers
        ):
            # require_agent_token = false is for local callers only; with remote callers
            # allowed, nobody is anonymous.
            raise ProxyError(
                "unauthenticated",
                "an X-AS-Agent-Token is required: this proxy accepts calls from other machines",
            )
        path = request.path
        if path == "/proxy":
            if "Expect" in request.headers:
                await _expect(request)
            return await handle_proxy(self.runtime, request, request_id)
        if path == "/health" and request.method in ("GET", "HEAD"):
            return web.json_response({"status": "ok"})
        raise ProxyError("bad_request", "blindkey serves /proxy and /health only")

    def _check_peer(self, request: web.BaseRequest) -> bool:
        """True for a caller on another machine that may call; refuses one that may not."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        try:
            address = ipaddress.ip_address(peer[0]) if peer else None
        except ValueError:
            address = None
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

    def _gate(self, headers: CIMultiDictProxy[str]) -> None:
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
        if "Origin" in headers or any(
            site != "none" for site in headers.getall("Sec-Fetch-Site", ())
        ):
            raise ProxyError(
                "forbidden_origin",
                "requests made by a web page (Origin, Sec-Fetch-Site) are refused",
            )
        host = headers.get("Host")
        if host is not None and host_name(host) not in self.allowed_hosts:
            raise ProxyError(
                "forbidden_origin", "the Host header must name the proxy's loopback address"
            )

    def _record_refusal(self, request: web.BaseRequest, request_id: str, error: ProxyError) -> None:
        record = AuditRecord(
            request_id=request_id,
            method=request.method[:16],
            url=request.headers.get("X-AS-Target-URL", "")[:2048],
        )
        record.block(error.code, error.status)
        self.runtime.audit.submit_after_answer(record)


async def _expect(request: web.BaseRequest) -> None:
    """`Expect: 100-continue`: tell the agent to send its body (the upstream is not asked)."""
    if request.headers["Expect"].strip().lower() != "100-continue":
        raise ProxyError("bad_request", "the only Expect blindkey knows is 100-continue")
    if request.version >= (1, 1) and request.writer is not None:
        await request.writer.write(CONTINUE)
        # The interim answer is not part of the response's size.
        request.writer.output_size = 0
