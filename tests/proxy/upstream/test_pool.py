"""The upstream client against real sockets: pooling, framing, limits, timeouts and TLS."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from blindkey.config.edit import toml_table
from blindkey.config.model import AllowlistSettings
from blindkey.config.paths import Paths
from blindkey.proxy.request.egress import EgressGuard, VettingResolver
from blindkey.proxy.upstream import (
    UnsendableRequest,
    UpstreamConnectError,
    UpstreamLimits,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResolveError,
    UpstreamTimeout,
)
from blindkey.proxy.upstream.connection import MAX_HEAD
from tests.proxy.conftest import SECRET, open_env
from tests.upstream import start_upstream

LIMITS = UpstreamLimits(connect_timeout=2.0, read_timeout=2.0, total_timeout=10.0, max_field=8192)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback TCP server whose answers are written byte for byte by the test."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


def answer_each(*answers: bytes, close: bool = False) -> Callable[[RawServer], Handler]:
    """A handler that reads a request and writes the next answer, for each answer."""

    def bind(server: RawServer) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                await server.read_request(reader)
                writer.write(answer)
                await writer.drain()
                if close:
                    return
            await reader.read()

        return handler

    return bind


def serve(bind: Callable[[RawServer], Handler]) -> RawServer:
    server = RawServer(lambda r, w: asyncio.sleep(0))
    server.handler = bind(server)
    return server


def make_pool(
    limits: UpstreamLimits = LIMITS, context: ssl.SSLContext | None = None
) -> UpstreamPool:
    guard = EgressGuard(AllowlistSettings())
    return UpstreamPool(VettingResolver(guard), context or ssl.create_default_context(), limits)


async def get(
    pool: UpstreamPool, port: int, path: str = "/", method: str = "GET", **kwargs: Any
) -> tuple[int, bytes, dict[str, str]]:
    response = await pool.request(
        method, "http", "127.0.0.1", port, f"127.0.0.1:{port}", path, [], **kwargs
    )
    async with response:
        body = b"".join([chunk async for chunk in response.iter_chunks()])
        return response.status, body, dict(response.headers)


async def test_keep_alive_connection_is_reused() -> None:
    async with serve(answer_each(OK, OK, OK)) as server:
        pool = make_pool()
        for _ in range(3):
            assert await get(pool, server.port) == (200, b"ok", {"Content-Length": "2"})
        pool.close()
        assert server.connections == 1
        assert server.requests[0].startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:")


async def test_idle_connections_are_closed_after_the_keepalive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("blindkey.proxy.upstream.pool.KEEPALIVE", 0.15)
    closed_by_us = asyncio.Event()

    def bind(server: RawServer) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            if await reader.read() == b"":
                closed_by_us.set()

        return handler

    async with serve(bind) as server:
        pool = make_pool()
        await get(pool, server.port)
        # The sweep closes it without any further request.
        await asyncio.wait_for(closed_by_us.wait(), 2)
        assert (await get(pool, server.port))[0] == 200
        pool.close()
        assert server.connections == 2


async def test_connection_closed_while_idle_is_replaced_for_a_replayable_request() -> None:
    # The server answers once per connection and hangs up without saying so.
    async with serve(answer_each(OK, close=True)) as server:
        pool = make_pool()
        assert (await get(pool, server.port))[0] == 200
        await asyncio.sleep(0.05)
        assert (await get(pool, server.port))[0] == 200
        pool.close()
        assert server.connections == 2


def answer_once_then_drop(server: RawServer) -> Handler:
    """Answers a connection's first request; reads the next one and hangs up unanswered."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await server.read_request(reader)

    return handler


@pytest.mark.parametrize(
    ("method", "sent_again"), [("GET", True), ("DELETE", True), ("POST", False), ("PATCH", False)]
)
async def test_only_idempotent_requests_are_sent_again_after_a_dropped_connection(
    method: str, sent_again: bool
) -> None:
    async with serve(answer_once_then_drop) as server:
        pool = make_pool()
        assert (await get(pool, server.port))[0] == 200
        if sent_again:
            assert (await get(pool, server.port, method=method))[0] == 200
        else:
            # The server may have acted on it before hanging up: a payment is not made twice.
            with pytest.raises(UpstreamProtocolError, match="without answering"):
                await get(pool, server.port, method=method)
        pool.close()
    assert [r.split(b" ")[0].decode() for r in server.requests] == (
        ["GET", method, method] if sent_again else ["GET", method]
    )


async def test_connection_close_answer_is_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with serve(answer_each(closing, closing)) as server:
        pool = make_pool()
        await get(pool, server.port)
        await get(pool, server.port)
        pool.close()
        assert server.connections == 2


async def test_interim_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    async with serve(answer_each(answer)) as server:
        pool = make_pool()
        status, body, headers = await get(pool, server.port)
        pool.close()
    assert (status, body) == (200, b"ok")
    assert "Link" not in headers


async def test_head_answer_has_no_body_and_its_connection_is_not_reused() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"

    def bind(server: RawServer) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = server.connections == 1
            await server.read_request(reader)
            writer.write(head if first else OK)
            await reader.read()

        return handler

    async with serve(bind) as server:
        pool = make_pool()
        assert await get(pool, server.port, method="HEAD") == (
            200,
            b"",
            {"Content-Length": "1000"},
        )
        assert await get(pool, server.port) == (200, b"ok", {"Content-Length": "2"})
        pool.close()
        assert server.connections == 2


async def test_body_until_close_without_length() -> None:
    answer = b"HTTP/1.1 200 OK\r\n\r\nall of it"
    async with serve(answer_each(answer, close=True)) as server:
        pool = make_pool()
        assert (await get(pool, server.port))[1] == b"all of it"
        pool.close()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "before the answer was complete"),
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "malformed"),
        (b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", "header over 8192"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 300 + b"\r\n", "over 256 headers"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed"),
    ],
    ids=["truncated", "garbage", "two-lengths", "no-colon", "long-field", "many", "bad-chunk"],
)
async def test_bad_answers_are_protocol_errors(answer: bytes, message: str) -> None:
    async with serve(answer_each(answer, close=True)) as server:
        pool = make_pool()
        with pytest.raises(UpstreamProtocolError, match=message):
            await get(pool, server.port)
        pool.close()


async def test_endless_header_stops_at_the_head_limit() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        sent = 0
        while sent < 4 * MAX_HEAD:
            writer.write(b"a" * 1024)
            sent += 1024
            await writer.drain()
        await reader.read()

    async with RawServer(endless) as server:
        pool = make_pool(UpstreamLimits(2.0, 2.0, 10.0, max_field=10 * MAX_HEAD))
        with pytest.raises(UpstreamProtocolError, match=f"more than {MAX_HEAD} bytes of headers"):
            await get(pool, server.port)
        pool.close()


async def test_bytes_after_a_complete_answer_retire_the_connection() -> None:
    async with serve(answer_each(OK + b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n\r\n", OK)) as server:
        pool = make_pool()
        status, _, headers = await get(pool, server.port)
        assert status == 200 and "X-Smuggled" not in headers
        await asyncio.sleep(0.05)
        second = await get(pool, server.port)
        pool.close()
    assert "X-Smuggled" not in second[2]
    assert server.connections == 2


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/ok", [("X-Key", "a\r\nX-Injected: 1")]),
        ("/ok", [("X-Key\nX-Injected", "1")]),
        ("/a b", []),
        ("/a\tb", []),
    ],
    ids=["crlf-value", "lf-name", "space-path", "tab-path"],
)
async def test_line_breaks_and_spaces_never_reach_the_wire(
    path: str, headers: list[tuple[str, str]]
) -> None:
    async with serve(answer_each(OK)) as server:
        pool = make_pool()
        with pytest.raises(UnsendableRequest, match=r"forbidden character|line break"):
            await pool.request(
                "GET", "http", "127.0.0.1", server.port, "h", path, headers, None, None
            )
        pool.close()
        assert server.connections == 0


async def test_extension_methods_are_sent_as_given() -> None:
    async with serve(answer_each(OK)) as server:
        pool = make_pool()
        assert (await get(pool, server.port, method="M-SEARCH"))[0] == 200
        pool.close()
        assert server.requests[0].startswith(b"M-SEARCH / HTTP/1.1\r\n")


async def test_silent_upstream_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with RawServer(silent) as server:
        pool = make_pool(UpstreamLimits(2.0, read_timeout=0.2, total_timeout=10.0, max_field=8192))
        with pytest.raises(UpstreamTimeout):
            await get(pool, server.port)
        pool.close()


async def test_total_deadline_cuts_a_trickling_body() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b".")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with RawServer(trickle) as server:
        pool = make_pool(UpstreamLimits(2.0, read_timeout=1.0, total_timeout=0.5, max_field=8192))
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(UpstreamTimeout):
            await get(pool, server.port)
        assert loop.time() - began < 2
        pool.close()


async def test_refused_and_unresolvable_hosts() -> None:
    pool = make_pool()
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await get(pool, port)
    with pytest.raises(UpstreamResolveError, match="cannot resolve"):
        await pool.request("GET", "http", "no-such-host.invalid", 80, "x", "/", [])
    pool.close()


class SilentResolver(AbstractResolver):
    """A DNS server that never answers (a substitute: the system resolver cannot be made
    to hang on this machine)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


async def test_resolution_that_never_answers_times_out() -> None:
    guard = EgressGuard(AllowlistSettings())
    limits = UpstreamLimits(connect_timeout=0.2, read_timeout=2.0, total_timeout=10.0, max_field=64)
    pool = UpstreamPool(
        VettingResolver(guard, SilentResolver()), ssl.create_default_context(), limits
    )
    with pytest.raises(UpstreamTimeout, match=r"resolving api\.example\.com took too long"):
        await pool.request("GET", "https", "api.example.com", 443, "api.example.com", "/", [])
    pool.close()


async def stream(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


@pytest.mark.parametrize("length_known", [True, False], ids=["content-length", "chunked"])
async def test_streamed_body_arrives_unchanged(length_known: bool) -> None:
    runner, port = await start_upstream()
    parts = [bytes(range(256)) * 64, b"", b"\r\n0\r\n\r\n", b"tail" * 5000]
    data = b"".join(parts)
    try:
        pool = make_pool()
        response = await pool.request(
            "POST",
            "http",
            "127.0.0.1",
            port,
            f"127.0.0.1:{port}",
            "/echo",
            [],
            stream(parts),
            len(data) if length_known else None,
        )
        async with response:
            await response.read()
            echoed = dict(response.headers)
        pool.close()
    finally:
        await runner.cleanup()
    assert echoed["X-Echo-Body-Sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(b"x" * 300_000)),
        ("deflate", zlib.compress(b"x" * 300_000)),
        ("deflate", zlib.compress(b"x" * 300_000)[2:-4]),  # raw deflate, as some servers send
    ],
    ids=["gzip", "zlib-deflate", "raw-deflate"],
)
async def test_compressed_bodies_are_decoded_in_bounded_steps(encoding: str, body: bytes) -> None:
    answer = (
        f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with serve(answer_each(answer)) as server:
        pool = make_pool()
        response = await pool.request(
            "GET", "http", "127.0.0.1", server.port, "h", "/", [], None, None
        )
        async with response:
            chunks = [chunk async for chunk in response.iter_chunks()]
        pool.close()
    assert b"".join(chunks) == b"x" * 300_000
    assert max(map(len, chunks)) <= 2**16


async def test_truncated_gzip_is_an_error() -> None:
    body = gzip.compress(b"y" * 10_000)[:-8]
    answer = (
        f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with serve(answer_each(answer)) as server:
        pool = make_pool()
        with pytest.raises(UpstreamProtocolError, match="ends early"):
            await get(pool, server.port)
        pool.close()


# TLS ---------------------------------------------------------------------------------------


async def tls_upstream(ca: trustme.CA) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"authorization": request.headers.get("Authorization", "")})

    app = web.Application()
    app.router.add_get("/hello", hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def test_tls_verifies_the_upstream_certificate() -> None:
    ca = trustme.CA()
    runner, port = await tls_upstream(ca)
    try:
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        pool = make_pool(context=trusting)
        response = await pool.request(
            "GET", "https", "127.0.0.1", port, f"127.0.0.1:{port}", "/hello", [], None, None
        )
        async with response:
            assert response.status == 200
        pool.close()

        untrusting = make_pool()
        with pytest.raises(UpstreamConnectError, match="not trusted"):
            await untrusting.request(
                "GET", "https", "127.0.0.1", port, f"127.0.0.1:{port}", "/hello", [], None, None
            )
        untrusting.close()
    finally:
        await runner.cleanup()


async def test_proxy_injects_over_tls_with_the_configured_ca(home: Paths, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    runner, port = await tls_upstream(ca)

    def configure(document: Any) -> None:
        toml_table(document, "proxy")["ca_file"] = str(ca_file)
        toml_table(document, "allowlist")["hosts"].append(f"https://127.0.0.1:{port}")

    try:
        async with open_env(home, configure) as env:
            status, _, body = await env.call(
                headers=env.to(f"https://127.0.0.1:{port}/hello", X_AS_Inject_Bearer="GITHUB_TOKEN")
            )
            assert status == 200
            # The upstream saw the key; the agent sees the marker in its echo.
            assert body == b'{"authorization": "Bearer [REDACTED:GITHUB_TOKEN]"}'
            assert SECRET.encode() not in body

            def untrust(document: Any) -> None:
                toml_table(document, "proxy")["ca_file"] = ""

            env.configure(untrust)
            assert await env.server.runtime.reload()
            status, _, body = await env.call(
                headers=env.to(f"https://127.0.0.1:{port}/hello", X_AS_Inject_Bearer="GITHUB_TOKEN")
            )
            assert status == 502
            assert b"not trusted" in body
    finally:
        await runner.cleanup()
