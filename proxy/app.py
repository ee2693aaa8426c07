"""The aiohttp application: request ids, the Host/Origin gate, /health and /proxy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.connections import ConnectionGuard
from proxy.errors import REQUEST_ID_HEADER, ProxyError, error_response, next_request_id
from proxy.handler import REQUEST_ID, RUNTIME, handle_proxy
from proxy.runtime import ProxyRuntime

GUARD: web.AppKey[ConnectionGuard] = web.AppKey("guard", ConnectionGuard)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names, not a bind
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "localhost.", "ip6-localhost"})
# Headers only browsers send; a page must never drive the proxy (CSRF, DNS rebinding).
BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")


def host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = next_request_id()
    request[REQUEST_ID] = request_id
    guard = request.app[GUARD]
    guard.request_started(request.transport)
    try:
        response = await handler(request)
    except ProxyError as exc:
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        return error_response(ProxyError("bad_request", exc.reason), request_id)
    finally:
        guard.request_finished(request.transport)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def gate_middleware(own_host: str) -> Middleware:
    allowed_hosts = LOOPBACK_NAMES | ({own_host.lower()} - WILDCARD_HOSTS)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        for header in BROWSER_HEADERS:
            if header in request.headers:
                raise ProxyError("forbidden_origin", "requests from web browsers are refused")
        host = request.headers.get("Host")
        if host is not None and host_name(host) not in allowed_hosts:
            raise ProxyError(
                "forbidden_origin", "the Host header must name the proxy's loopback address"
            )
        return await handler(request)

    return gate


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_unknown(request: web.Request) -> web.Response:
    raise ProxyError("bad_request", "blindkey serves /proxy and /health only")


def build_app(runtime: ProxyRuntime, own_host: str, guard: ConnectionGuard) -> web.Application:
    app = web.Application(middlewares=[request_id_middleware, gate_middleware(own_host)])
    app[RUNTIME] = runtime
    app[GUARD] = guard
    app.router.add_get("/health", handle_health, allow_head=True)
    app.router.add_route("*", "/proxy", handle_proxy)
    app.router.add_route("*", "/{tail:.*}", handle_unknown)
    return app
