"""A loopback upstream that misbehaves on request: echoes, redirects, streams, hangs, resets."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import re
import ssl
import zlib
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

RELEASE_SSE = web.AppKey("release_sse", asyncio.Event)
HITS = web.AppKey("hits", list)
STORED = web.AppKey("stored", dict)


@web.middleware
async def record_hits(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[HITS].append((request.method, request.path_qs, dict(request.headers)))
    response: web.StreamResponse = await handler(request)
    return response


async def reflect(request: web.Request) -> web.Response:
    """Sends the bearer value back in every encoding a careless API might use."""
    value = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
    forms = [
        value,
        base64.b64encode(value),
        base64.b64encode(b"x" + value),
        base64.b64encode(b"xy" + value),
        base64.urlsafe_b64encode(value).rstrip(b"="),
        base64.urlsafe_b64encode(b"?" + value),
        quote(value, safe="").encode(),
        re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(value, safe="")).encode(),
        json.dumps(value.decode())[1:-1].replace("/", "\\/").encode(),
        value.hex().encode(),
        value.hex().upper().encode(),
    ]
    return web.Response(body=b"\n".join(forms))


async def stored(request: web.Request) -> web.Response:
    """An API that returns a key saved by an earlier call, not the one just injected."""
    return web.json_response({"saved_key": request.app[STORED]["value"]})


async def bomb(request: web.Request) -> web.StreamResponse:
    """A small gzip body that inflates to `mb` MiB of zeros."""
    size = int(request.query.get("mb", "1")) * 2**20
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    response = web.StreamResponse(headers={"Content-Encoding": "gzip"})
    await response.prepare(request)
    block = bytes(2**20)
    for _ in range(size // len(block)):
        await response.write(compressor.compress(block))
    await response.write(compressor.flush())
    await response.write_eof()
    return response


async def drip(request: web.Request) -> web.StreamResponse:
    """One byte every 0.1 s, for `n` bytes: a stream that outlives a total timeout."""
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(int(request.query.get("n", "100"))):
        await response.write(b".")
        await asyncio.sleep(0.1)
    await response.write_eof()
    return response


async def short(request: web.Request) -> web.Response:
    """Promises 100 bytes, sends 10, hangs up."""
    assert request.transport is not None
    request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    request.transport.close()
    await asyncio.sleep(0.1)
    return web.Response()


async def huge_header(request: web.Request) -> web.Response:
    return web.Response(headers={"X-Huge": "a" * 70000})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    payload = {
        "method": request.method,
        "path": request.path_qs,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body": body.decode("utf-8", "replace"),
    }
    auth = request.headers.get("Authorization", "")
    response = web.Response(
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={
            "X-Echo-Authorization": auth,
            # A digest lets a test see which value arrived without the proxy redacting it.
            "X-Echo-Authorization-Sha256": hashlib.sha256(auth.encode()).hexdigest(),
            "X-Echo-Body-Sha256": hashlib.sha256(body).hexdigest(),
            "Set-Cookie": f"session={auth}",
        },
    )
    if request.query.get("close"):
        response.force_close()  # the next request needs a new connection, and a new lookup
    return response


async def redirect(request: web.Request) -> web.Response:
    # Reflects whatever query it got into Location, as careless APIs do.
    to = request.query.get("to", "https://elsewhere.example/next")
    return web.Response(status=302, headers={"Location": f"{to}?{request.query_string}"})


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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """An OpenAI-shaped endpoint that reflects the key it was called with into its answer,
    streamed as chunk events (`"stream": true`) or whole."""
    payload = await request.json()
    auth = request.headers.get("Authorization", "")
    digest = {"X-Echo-Authorization-Sha256": hashlib.sha256(auth.encode()).hexdigest()}
    base = {"id": "chatcmpl-1", "created": 1, "model": payload["model"]}
    words = ["You", " called", " with ", auth]
    if not payload.get("stream"):
        message = {"role": "assistant", "content": "".join(words)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        body = {**base, "object": "chat.completion", "choices": [choice]}
        return web.json_response(body, headers=digest)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **digest})
    await response.prepare(request)
    for word in words:
        choice = {"index": 0, "delta": {"content": word}, "finish_reason": None}
        event = {**base, "object": "chat.completion.chunk", "choices": [choice]}
        await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
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
    app = web.Application(middlewares=[record_hits])
    app[RELEASE_SSE] = asyncio.Event()
    app[HITS] = []
    app[STORED] = {"value": ""}
    app.router.add_get("/reflect", reflect)
    app.router.add_get("/stored", stored)
    app.router.add_get("/bomb", bomb)
    app.router.add_get("/drip", drip)
    app.router.add_get("/huge-header", huge_header)
    app.router.add_get("/short", short)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/br", brotli_claimed)
    app.router.add_get("/sse", sse)
    app.router.add_get("/chunks", chunks)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hang", hang)
    app.router.add_get("/reset", reset)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_upstream(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    (address,) = runner.addresses
    return runner, int(address[1])


async def start_tls_upstream(
    context: ssl.SSLContext, host: str = "127.0.0.1"
) -> tuple[web.AppRunner, int]:
    """The same upstream over TLS (a trustme certificate in `context`)."""
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, 0, ssl_context=context).start()
    (address,) = runner.addresses
    return runner, int(address[1])


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
