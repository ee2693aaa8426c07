"""A client that wants HTTP/2 inside an intercepted tunnel: blindkey's TLS offers only
http/1.1 (ALPN), so nothing is ever read as h2. A client that can fall back does (curl
--http2 gets HTTP/1.1, and the swap), one that offers h2 only gets no protocol agreed and,
if it speaks h2 anyway, a 400 and a closed connection: its frames reach no upstream."""

from __future__ import annotations

import asyncio
import re
import ssl

from tests.proxy.conftest import SECRET
from tests.proxy.tls.conftest import Mode, curl, tunnel
from tests.upstream import HITS

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def test_a_client_offering_h2_only_agrees_no_protocol_and_is_refused(mode: Mode) -> None:
    hits = len(mode.bound.app[HITS])
    reader, writer = await tunnel(mode, mode.bound_port, alpn=["h2"])
    tls = writer.get_extra_info("ssl_object")
    assert isinstance(tls, ssl.SSLObject) and tls.selected_alpn_protocol() is None
    writer.write(PREFACE + EMPTY_SETTINGS)
    said = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            said += chunk
    except ConnectionError:
        pass
    writer.close()
    assert re.match(rb"HTTP/1\.[01] 400 ", said), said[:200]
    assert len(mode.bound.app[HITS]) == hits


async def test_curl_asking_for_h2_falls_back_to_http_1_1(mode: Mode) -> None:
    held = mode.placeholders["GITHUB_TOKEN"]
    url = f"https://127.0.0.1:{mode.bound_port}/echo"
    status, out = await curl(mode, url, "--http2", "-H", f"Authorization: Bearer {held}",
                             "-w", "\n%{http_version}")  # fmt: skip
    assert status == 0, out
    assert out.endswith(b"\n1.1")
    _, _, headers = mode.bound.app[HITS][-1]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET.encode() not in out
