"""A request smuggled inside an intercepted tunnel is refused whole: blindkey and the
upstream could frame it differently, and the second request would carry a placeholder
past the checks (or a value to where the first one was going). Nothing reaches the
upstream, with a value or without."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.proxy.conftest import SECRET
from tests.proxy.tls.conftest import Mode, tunnel
from tests.upstream import HITS

HIDDEN = "GET /echo?k={p} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {p}\r\n\r\n"


def smuggled(kind: str, host: str, placeholder: str) -> bytes:
    hidden = HIDDEN.format(p=placeholder, host=host)
    first = f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
    if kind == "cl-te":
        body = "0\r\n\r\n" + hidden
        head = "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
    elif kind == "te-cl":
        body = "0\r\n\r\n" + hidden
        head = f"Transfer-Encoding: chunked\r\nContent-Length: {len(body)}\r\n"
    elif kind == "double-cl":
        body = hidden
        head = f"Content-Length: 0\r\nContent-Length: {len(body)}\r\n"
    elif kind == "te-folded":
        body = "0\r\n\r\n" + hidden
        head = f"Content-Length: {len(body)}\r\nTransfer-Encoding:\r\n chunked\r\n"
    elif kind == "obs-fold":
        body = ""
        head = f"Content-Length: 0\r\nX-Key: a\r\n Bearer {placeholder}\r\n"
    else:  # two codings, chunked not last: the length is unknowable
        body = "0\r\n\r\n" + hidden
        head = "Transfer-Encoding: chunked, identity\r\n"
    return (first + head + "\r\n" + body).encode()


async def answer(reader: asyncio.StreamReader) -> bytes:
    """What the proxy said before it closed the connection."""
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            data += chunk
    except ConnectionError:
        pass
    return data


@pytest.mark.parametrize(
    "kind", ["cl-te", "te-cl", "double-cl", "te-folded", "obs-fold", "te-list"]
)
async def test_a_smuggled_request_is_refused(mode: Mode, kind: str) -> None:
    held = mode.placeholders["GITHUB_TOKEN"]
    hits = len(mode.bound.app[HITS])
    reader, writer = await tunnel(mode, mode.bound_port)
    writer.write(smuggled(kind, f"127.0.0.1:{mode.bound_port}", held))
    said = await answer(reader)
    writer.close()
    # aiohttp's parser refuses it (an HTTP/1.0 answer: it cannot trust the version).
    assert re.match(rb"HTTP/1\.[01] 400 ", said), said[:200]
    assert b'"bad_request"' in said
    assert said.count(b"HTTP/1.") == 1  # one answer: the hidden request was never served
    assert SECRET.encode() not in said
    assert len(mode.bound.app[HITS]) == hits  # nothing reached the upstream
