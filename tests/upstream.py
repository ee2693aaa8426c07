"""A loopback upstream that misbehaves on request: echoes, redirects, streams, hangs, resets."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import zlib

import orjson
from aiohttp import web

RELEASE_SSE = web.AppKey("release_sse", asyncio.Event)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    payload = {
        "method": request.method,
        "path": request.path_qs,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body": body.decode("utf-8", "replace"),
    }
    auth = request.headers.get("Authorization", "")
    return web.Response(
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={
            "X-Echo-Authorization": auth,
            # A digest lets a test see which value arrived without the proxy redacting it.
            "X-Echo-Authorization-Sha256": hashlib.sha256(auth.encode()).hexdigest(),
            "Set-Cookie": f"session={auth}",
        },
    )


async def redirect(request: web.Request) -> web.Response:
    # Reflects whatever query it got into Location, as careless APIs do.
    return web.Response(
        status=302, headers={"Location": f"https://elsewhere.example/next?{request.query_string}"}
    )


async def gzipped(request: web.Request) -> web.Response:
    body = orjson.dumps({"echo": request.headers.get("Authorization", "")})
    if request.query.get("deflate"):
        return web.Response(body=zlib.compress(body), headers={"Content-Encoding": "deflate"})
    return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})


async def brotli_claimed(request: web.Request) -> web.Response:
    return web.Response(body=b"\x0b\x02\x80hello\x03", headers={"Content-Encoding": "br"})


async def sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await request.app[RELEASE_SSE].wait()
    await response.write(b"data: second\n\n")
    await response.write_eof()
    return response


async def chunks(request: web.Request) -> web.StreamResponse:
    """Sends the Authorization value back one byte per chunk."""
    response = web.StreamResponse()
    await response.prepare(request)
    for byte in request.headers.get("Authorization", "").encode():
        await response.write(bytes([byte]))
        await asyncio.sleep(0)
    await response.write_eof()
    return response


async def big(request: web.Request) -> web.StreamResponse:
    """Streams `n` bytes of a repeating pattern in 64 KiB chunks."""
    size = int(request.query.get("n", "0"))
    block = b"0123456789abcdef" * 4096
    response = web.StreamResponse()
    await response.prepare(request)
    while size > 0:
        await response.write(block[:size])
        size -= len(block)
    await response.write_eof()
    return response


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="slow done")


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.Response()


async def reset(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.abort()
    await asyncio.sleep(0.1)
    return web.Response()


def make_app() -> web.Application:
    app = web.Application()
    app[RELEASE_SSE] = asyncio.Event()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/br", brotli_claimed)
    app.router.add_get("/sse", sse)
    app.router.add_get("/chunks", chunks)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hang", hang)
    app.router.add_get("/reset", reset)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_upstream() -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def _serve_forever() -> None:
    runner, port = await start_upstream()
    print(f"PORT {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    """Run standalone (`python -m tests.upstream`); prints `PORT n` once listening."""
    asyncio.run(_serve_forever())


if __name__ == "__main__":
    main()
