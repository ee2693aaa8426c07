"""The benchmark's upstream: a small fixed JSON answer, as most API calls get."""

from __future__ import annotations

import asyncio

from aiohttp import web

SMALL = b'{"id": 1, "login": "octocat", "plan": {"name": "pro"}}'


async def small(request: web.Request) -> web.Response:
    return web.Response(body=SMALL, content_type="application/json")


async def serve() -> None:
    app = web.Application()
    app.router.add_get("/small", small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve())
