"""A hostile upstream writes its answer byte for byte to get a value past the redactor:
in the status line, a header name, a trailer, layered or multi-member compression."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import pytest

from blindkey.broker.vault import FileVault
from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import SECRET, open_env
from tests.proxy.upstream.test_pool import RawServer, answer_each, serve

MARK = b"[REDACTED:GITHUB_TOKEN]"


async def proxied(
    home: Paths, answer: bytes, inject: str = "GITHUB_TOKEN"
) -> tuple[bytes, RawServer]:
    """The proxy's whole answer, as bytes on the wire, to a call the hostile upstream gets."""
    async with serve(answer_each(answer)) as server:

        def allow(document: Any) -> None:
            hosts = [*toml_table(document, "allowlist")["hosts"], f"http://127.0.0.1:{server.port}"]
            toml_table(document, "allowlist")["hosts"] = string_array(hosts)

        async with open_env(home, configure=allow) as env:
            reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
            request = (
                "GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"X-AS-Agent-Token: {env.token}\r\n"
                f"X-AS-Target-URL: http://127.0.0.1:{server.port}/\r\n"
                f"X-AS-Inject-Bearer: {inject}\r\n\r\n"
            )
            writer.write(request.encode())
            wire = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return wire, server


def status_line(wire: bytes) -> bytes:
    return wire.split(b"\r\n", 1)[0]


def head_and_body(wire: bytes) -> tuple[bytes, bytes]:
    head, _, body = wire.partition(b"\r\n\r\n")
    return head, body


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def assert_no_value(wire: bytes) -> None:
    assert SECRET.encode() not in wire
    assert SECRET.encode()[4:-4] not in wire


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 2\r\n\r\nok",  # answered whole
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",  # streamed
    ],
    ids=["whole", "streamed"],
)
@pytest.mark.parametrize("status", [b"200", b"503"])
async def test_reason_phrase_is_redacted(home: Paths, framing: bytes, status: bytes) -> None:
    answer = b"HTTP/1.1 " + status + b" " + SECRET.encode() + b"\r\n" + framing
    wire, _ = await proxied(home, answer)
    assert status_line(wire) == b"HTTP/1.1 " + status + b" " + MARK
    assert_no_value(wire)


async def test_header_named_after_a_value_is_dropped(home: Paths) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nX-" + SECRET.encode() + b": 1\r\nX-Kept: yes\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    wire, _ = await proxied(home, answer)
    head, body = head_and_body(wire)
    assert b"X-Kept: yes" in head and body == b"ok"
    assert_no_value(wire)


async def test_trailer_with_a_value_never_reaches_the_agent(home: Paths) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Leak\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Leak: " + SECRET.encode() + b"\r\n\r\n"
    )
    wire, _ = await proxied(home, answer)
    assert dechunk(head_and_body(wire)[1]) == b"ok"
    assert_no_value(wire)


async def test_interim_answer_with_a_value_never_reaches_the_agent(home: Paths) -> None:
    answer = (
        b"HTTP/1.1 103 " + SECRET.encode() + b"\r\nLink: </" + SECRET.encode() + b">\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    wire, _ = await proxied(home, answer)
    assert status_line(wire) == b"HTTP/1.1 200 OK"
    assert_no_value(wire)


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 2\r\n\r\nok", b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
    ids=["whole", "streamed"],
)
async def test_a_non_ascii_value_in_a_header_or_reason_phrase_is_redacted(
    home: Paths, framing: bytes
) -> None:
    # The head is decoded as Latin-1: the UTF-8 bytes of the value become other characters,
    # which the agent gets UTF-8-encoded again and undoes with one .encode("latin-1").
    value = "pässwörd-Ünïcode-€-0123456789"
    FileVault(home).set("development", "UNICODE_KEY", value)
    raw = value.encode()
    answer = b"HTTP/1.1 200 " + raw + b"\r\nX-Echo: key=" + raw + b"\r\n" + framing
    wire, _ = await proxied(home, answer, inject="UNICODE_KEY")
    head, _ = head_and_body(wire)
    assert b"X-Echo: key=[REDACTED:UNICODE_KEY]" in head
    assert status_line(wire) == b"HTTP/1.1 200 [REDACTED:UNICODE_KEY]"
    for spelling in (raw, raw.decode("latin-1").encode()):
        assert spelling not in wire and spelling[4:-4] not in wire


def gzip_answer(body: bytes, *encoding_lines: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(
        b"Content-Encoding: " + e + b"\r\n" for e in encoding_lines
    )
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def body_of(wire: bytes) -> bytes:
    head, body = head_and_body(wire)
    return dechunk(body) if b"chunked" in head.lower() else body


async def test_doubly_gzipped_body_on_two_header_lines_is_decoded_and_scanned(home: Paths) -> None:
    inner = b'{"token": "' + SECRET.encode() + b'"}'
    wire, _ = await proxied(
        home, gzip_answer(gzip.compress(gzip.compress(inner)), b"gzip", b"gzip")
    )
    assert status_line(wire) == b"HTTP/1.1 200 OK"
    assert body_of(wire) == b'{"token": "' + MARK + b'"}'


async def test_both_layers_listed_on_one_line_are_decoded(home: Paths) -> None:
    inner = SECRET.encode()
    wire, _ = await proxied(home, gzip_answer(gzip.compress(gzip.compress(inner)), b"gzip, gzip"))
    assert body_of(wire) == MARK


@pytest.mark.parametrize(
    "lines", [(b"br", b"identity"), (b"identity", b"br"), (b"gzip, x-unknown",), (b"zstd",)]
)
async def test_an_undecodable_layer_anywhere_is_refused(
    home: Paths, lines: tuple[bytes, ...]
) -> None:
    wire, _ = await proxied(home, gzip_answer(b"raw " + SECRET.encode(), *lines))
    assert status_line(wire).startswith(b"HTTP/1.1 502")
    assert b"upstream_error" in wire
    assert_no_value(wire)


async def test_every_gzip_member_is_decoded(home: Paths) -> None:
    members = gzip.compress(b"first member, harmless. ") + gzip.compress(b"then " + SECRET.encode())
    wire, _ = await proxied(home, gzip_answer(members, b"gzip"))
    assert body_of(wire) == b"first member, harmless. then " + MARK
