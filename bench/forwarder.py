"""The floor of any aiohttp design: a forwarder that does nothing but forward.

It takes the same requests as blindkey (`X-AS-Target-URL`, `X-AS-Inject-Bearer`), copies
the headers, sets `Authorization` from a value it holds in memory, and streams the answer
back through one pooled `ClientSession`. No authentication, allowlist, broker, redaction
or audit: whatever blindkey costs beyond this is the price of those.

`python -m bench.forwarder` reads the bearer value from BENCH_BEARER and prints `PORT n`.
"""

from __future__ import annotations

import contextlib
import os

import aiohttp
from aiohttp import web

from bench.upstream import run_loop, serve_forever

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
BEARER: web.AppKey[str] = web.AppKey("bearer", str)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


async def forward(request: web.Request) -> web.StreamResponse:
    target = request.headers.get("X-AS-Target-URL")
    if not target:
        raise web.HTTPBadRequest(text="X-AS-Target-URL is required")
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in HOP_BY_HOP and not name.lower().startswith("x-as-")
    }
    headers["Authorization"] = f"Bearer {request.app[BEARER]}"
    body = request.content if request.body_exists else None
    session = request.app[SESSION]
    async with session.request(
        request.method, target, headers=headers, data=body, allow_redirects=False
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-encoding":
                response.headers.add(name, value)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def serve() -> None:
    app = web.Application()
    app[BEARER] = os.environ.get("BENCH_BEARER", "bench")
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    )
    app[SESSION] = session
    app.router.add_route("*", "/proxy", forward)
    try:
        await serve_forever(web.AppRunner(app, access_log=None, keepalive_timeout=75.0))
    finally:
        await session.close()


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve())


if __name__ == "__main__":
    main()
