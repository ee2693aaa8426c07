"""The streaming upstream (aiohttp): SSE token events and a 1 GiB body.

Small responses come from nginx (bench/nginx.py), which leaves the CPU to the proxies.
`python -m bench.upstream [--embed VALUE]` prints `PORT n` once it listens; with --embed,
every MiB of /big carries VALUE once, so a redacting proxy has real work to do.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

SMALL = b'{"id": 1, "login": "octocat", "plan": {"name": "pro"}}'
MIB = 2**20
EMBED: web.AppKey[bytes] = web.AppKey("embed", bytes)
TOKENS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


def big_block(embed: bytes) -> bytes:
    """One MiB of base64 lines (API-payload-like text), with `embed` in the middle."""
    rng = random.Random(1)
    lines = []
    size = 0
    while size < MIB:
        line = base64.b64encode(rng.randbytes(57)) + b"\n"
        lines.append(line)
        size += len(line)
    block = b"".join(lines)
    if embed:
        middle = MIB // 2
        block = block[:middle] + embed + block[middle + len(embed) :]
    return block[:MIB]


async def small(request: web.Request) -> web.Response:
    return web.Response(body=SMALL, content_type="application/json")


async def sse(request: web.Request) -> web.StreamResponse:
    """`n` OpenAI-style chunk events, `interval_ms` apart, each stamped just before writing.

    The stamp is CLOCK_MONOTONIC, which every process on the machine shares.
    """
    count = min(int(request.query.get("n", "300")), 5000)
    interval = min(float(request.query.get("interval_ms", "5")), 100.0) / 1000
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for i in range(count):
        token = TOKENS[i % len(TOKENS)]
        body = (
            f'{{"id":"chatcmpl-bench","object":"chat.completion.chunk","choices":'
            f'[{{"index":0,"delta":{{"content":"{token}"}}}}],"seq":{i},'
            f'"t":{time.monotonic_ns()}}}'
        )
        await response.write(f"data: {body}\n\n".encode())
        await asyncio.sleep(interval)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def big(request: web.Request) -> web.StreamResponse:
    mib = min(int(request.query.get("mib", "1024")), 4096)
    block = request.app[EMBED]
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = mib * MIB
    await response.prepare(request)
    for _ in range(mib):
        await response.write(block)
    await response.write_eof()
    return response


async def serve(embed: bytes) -> None:
    app = web.Application()
    app[EMBED] = big_block(embed)
    app.router.add_get("/small", small)
    app.router.add_get("/sse", sse)
    app.router.add_get("/big", big)
    await serve_forever(web.AppRunner(app, access_log=None))


async def serve_forever(runner: web.BaseRunner) -> None:
    """Listen on a free loopback port, print `PORT n` for the bench, serve until cancelled."""
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed, as blindkey itself uses."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--embed", default="", help="a value to place once in every MiB of /big")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve(args.embed.encode()))


if __name__ == "__main__":
    main()
