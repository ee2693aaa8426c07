"""A hostile upstream compresses its answer as a transfer coding (`Transfer-Encoding: gzip,
chunked`, or `gzip` alone, ended by closing the connection) to get a value past the
redactor: llhttp takes only `chunked` off, so every other transfer coding must be decoded
before the body is scanned, or the answer refused."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import pytest

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import SECRET, open_env
from tests.proxy.upstream.test_pool import answer_each, serve

MARK = b"[REDACTED:GITHUB_TOKEN]"
DOCUMENT = b'{"saved_key": "' + SECRET.encode() + b'"}'


async def proxied(home: Paths, answer: bytes, *, close: bool) -> bytes:
    """The proxy's whole answer, as bytes on the wire, to a call the hostile upstream gets."""
    async with serve(answer_each(answer, close=close)) as server:

        def allow(document: Any) -> None:
            hosts = [*toml_table(document, "allowlist")["hosts"], f"http://127.0.0.1:{server.port}"]
            toml_table(document, "allowlist")["hosts"] = string_array(hosts)

        async with open_env(home, configure=allow) as env:
            reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
            writer.write(
                (
                    "GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    f"X-AS-Agent-Token: {env.token}\r\n"
                    f"X-AS-Target-URL: http://127.0.0.1:{server.port}/\r\n"
                    "X-AS-Inject-Bearer: GITHUB_TOKEN\r\n\r\n"
                ).encode()
            )
            wire = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return wire


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def body_of(wire: bytes) -> bytes:
    head, _, body = wire.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def assert_no_value(wire: bytes) -> None:
    assert SECRET.encode() not in wire
    assert SECRET.encode()[4:-4] not in wire


DEFLATED = zlib.compress(DOCUMENT)
GZIPPED = gzip.compress(DOCUMENT)


@pytest.mark.parametrize(
    ("transfer", "body", "close"),
    [
        (b"gzip, chunked", chunked(GZIPPED), False),
        (b"gzip\r\nTransfer-Encoding: chunked", chunked(GZIPPED), False),  # two lines, one list
        (b"deflate, chunked", chunked(DEFLATED), False),
        (b"gzip", GZIPPED, True),  # no chunked: the body ends when the connection does
        (b"identity, gzip", GZIPPED, True),
        (b"GZip , Chunked", chunked(GZIPPED), False),
    ],
    ids=["gzip-chunked", "two-lines", "deflate-chunked", "gzip-alone", "identity-gzip", "case"],
)
async def test_a_transfer_coding_is_decoded_and_scanned(
    home: Paths, transfer: bytes, body: bytes, close: bool
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + transfer + b"\r\n\r\n" + body
    wire = await proxied(home, answer, close=close)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n"), wire[:200]
    assert body_of(wire) == b'{"saved_key": "' + MARK + b'"}'
    assert_no_value(wire)


async def test_a_transfer_coding_over_a_content_coding_is_undone_first(home: Paths) -> None:
    body = chunked(gzip.compress(zlib.compress(DOCUMENT)))
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n" + body
    )
    wire = await proxied(home, answer, close=False)
    assert body_of(wire) == b'{"saved_key": "' + MARK + b'"}'
    assert_no_value(wire)


@pytest.mark.parametrize(
    ("transfer", "body", "close"),
    [
        (b"compress, chunked", chunked(b"raw " + DOCUMENT), False),
        (b"x-custom", b"raw " + DOCUMENT, True),
        (b"chunked, gzip", chunked(GZIPPED), True),  # chunked not last: unframed, refused
        (b"br, chunked", chunked(b"raw " + DOCUMENT), False),
    ],
    ids=["compress", "unknown", "chunked-not-last", "br"],
)
async def test_a_transfer_coding_blindkey_cannot_decode_is_refused(
    home: Paths, transfer: bytes, body: bytes, close: bool
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + transfer + b"\r\n\r\n" + body
    wire = await proxied(home, answer, close=close)
    assert wire.startswith(b"HTTP/1.1 502"), wire[:200]
    assert b"upstream_error" in wire and b"transfer coding" in wire
    assert_no_value(wire)
