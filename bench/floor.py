"""The floor of blindkey's own design: its front and upstream client with no feature on.

aiohttp's low-level server (as proxy/app.py) and proxy/upstream.py's pooled client, copying
headers and setting `Authorization` from memory: no agent token, allowlist, broker,
redaction or audit. blindkey's distance to this is the price of its features; this
target's distance to nginx is the price of Python and aiohttp.

`python -m bench.floor` reads the bearer value from BENCH_BEARER and prints `PORT n`.
"""

from __future__ import annotations

import contextlib
import os
import ssl

from aiohttp import web
from yarl import URL

from bench.forwarder import HOP_BY_HOP
from bench.upstream import run_loop, serve_forever
from blindkey.config.model import AllowlistSettings
from blindkey.proxy.request.egress import EgressGuard, VettingResolver
from blindkey.proxy.upstream import UpstreamLimits, UpstreamPool


async def serve() -> None:
    bearer = f"Bearer {os.environ.get('BENCH_BEARER', 'bench')}"
    pool = UpstreamPool(
        VettingResolver(EgressGuard(AllowlistSettings())),
        ssl.create_default_context(),
        UpstreamLimits(connect_timeout=10, read_timeout=30, total_timeout=900, max_field=16384),
    )

    async def forward(request: web.BaseRequest) -> web.StreamResponse:
        target = URL(request.headers["X-AS-Target-URL"])
        assert target.host is not None and target.port is not None
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP and not name.lower().startswith("x-as-")
        ]
        headers.append(("Authorization", bearer))
        upstream = await pool.request(
            request.method,
            target.scheme,
            target.host,
            target.port,
            target.raw_authority,
            target.raw_path_qs,
            headers,
        )
        async with upstream:
            body = await upstream.read()
            returned = [
                (name, value)
                for name, value in upstream.headers
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-encoding"
            ]
            return web.Response(status=upstream.status, body=body, headers=returned)

    try:
        await serve_forever(
            web.ServerRunner(web.Server(forward, access_log=None, keepalive_timeout=75.0))
        )
    finally:
        pool.close()


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve())


if __name__ == "__main__":
    main()
