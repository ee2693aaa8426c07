"""`Expect: 100-continue` inside an intercepted tunnel, as AWS SDKs send every upload: the
client holds its body back until it hears `100 Continue`. blindkey answers it (as /proxy
does) and the upload goes through; before, it forwarded the head and waited for a body that
the client was holding back, until the upstream timed out (504)."""

from __future__ import annotations

import asyncio
import hashlib

from tests.proxy.tls.conftest import Mode, tunnel
from tests.upstream import HITS

BODY = b"an upload's bytes " * 64


async def test_an_upload_that_waits_for_100_continue_goes_through(mode: Mode) -> None:
    reader, writer = await tunnel(mode, mode.bound_port)
    placeholder = mode.placeholders["GITHUB_TOKEN"]
    writer.write(
        f"PUT /echo HTTP/1.1\r\nHost: 127.0.0.1:{mode.bound_port}\r\n"
        f"Authorization: Bearer {placeholder}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(BODY)}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(BODY)
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert f"x-echo-body-sha256: {hashlib.sha256(BODY).hexdigest()}".encode() in head.lower()
    method, _, headers = mode.bound.app[HITS][-1]
    assert method == "PUT" and "Expect" not in headers  # answered here, not passed on
