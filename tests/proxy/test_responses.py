"""What comes back: redirects untouched but redacted, compressed and chunked echoes, streams."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import quote

from tests.proxy.conftest import SECRET, Env
from tests.upstream import HITS


async def test_redirect_is_returned_not_followed_and_location_redacted(env: Env) -> None:
    headers = env.headers("/redirect?key=x", **{"X-AS-Inject-Query-key": "GITHUB_TOKEN"})
    async with env.session.get(env.url, headers=headers, allow_redirects=False) as response:
        assert response.status == 302
        location = response.headers["Location"]
    assert location == "https://elsewhere.example/next?key=[REDACTED:GITHUB_TOKEN]"
    assert quote(SECRET, safe="") not in location


async def test_set_cookie_and_every_header_redacted(env: Env) -> None:
    _, headers, _ = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert headers["Set-Cookie"] == "session=Bearer [REDACTED:GITHUB_TOKEN]"
    assert all(SECRET not in value for value in headers.values())


async def test_gzip_body_is_decoded_and_scanned(env: Env) -> None:
    for path in ("/gzip", "/gzip?deflate=1"):
        status, headers, body = await env.call(
            headers=env.headers(path, X_AS_Inject_Bearer="GITHUB_TOKEN")
        )
        assert status == 200
        assert "Content-Encoding" not in headers
        assert body == b'{"echo":"Bearer [REDACTED:GITHUB_TOKEN]"}'


async def test_agent_accept_encoding_is_not_forwarded(env: Env) -> None:
    headers = {
        **env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"),
        "Accept-Encoding": "br, zstd, x-custom",
    }
    _, _, body = await env.call(headers=headers)
    assert b'"Accept-Encoding", "gzip, deflate"' in body.replace(b'","', b'", "')


async def test_value_split_across_one_byte_chunks(env: Env) -> None:
    status, _, body = await env.call(
        headers=env.headers("/chunks", X_AS_Inject_Bearer="GITHUB_TOKEN")
    )
    assert status == 200
    assert body == b"Bearer [REDACTED:GITHUB_TOKEN]"


async def test_basic_pair_echoed_as_base64_is_redacted(env: Env) -> None:
    status, _, body = await env.call(headers=env.headers("/chunks", X_AS_Inject_Basic="BASIC_PAIR"))
    assert status == 200
    assert body == b"Basic [REDACTED:BASIC_PAIR]"
    assert base64.b64encode(b"octocat:s3cr3t-Passw0rd-Value") not in body


async def test_sse_event_is_forwarded_before_the_next_one_exists(env: Env) -> None:
    headers = env.headers("/sse", X_AS_Inject_Bearer="GITHUB_TOKEN")
    async with env.session.get(env.url, headers=headers) as response:
        assert response.status == 200
        started = time.monotonic()
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=2)
        assert first == b"data: first\n\n"
        assert time.monotonic() - started < 1.0
        env.release_sse()
        rest = await response.content.read()
    assert rest == b"data: second\n\n"


async def test_large_streamed_response_passes_whole(env: Env) -> None:
    size = 8 * 2**20 + 12345
    headers = env.headers(f"/big?n={size}", X_AS_Inject_Bearer="GITHUB_TOKEN")
    status, _, body = await env.call(headers=headers)
    assert status == 200
    assert len(body) == size
    assert body[:32] == b"0123456789abcdef0123456789abcdef"


async def test_small_answer_is_sent_whole_with_a_length(env: Env) -> None:
    status, headers, body = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert status == 200
    assert int(headers["Content-Length"]) == len(body)
    assert "Transfer-Encoding" not in headers
    assert b"[REDACTED:GITHUB_TOKEN]" in body


async def test_upstream_that_hangs_up_mid_body_is_an_upstream_error(env: Env) -> None:
    status, _, body = await env.call(
        headers=env.headers("/short", X_AS_Inject_Bearer="GITHUB_TOKEN")
    )
    assert status == 502
    assert b'"upstream_error"' in body


async def _raw_exchange(env: Env, head: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.server.port)
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def test_expect_100_continue_is_answered_by_the_proxy(env: Env) -> None:
    body = b"x" * 5000
    head = (
        f"POST /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nX-AS-Agent-Token: {env.token}\r\n"
        f"X-AS-Target-URL: {env.base}/echo\r\nX-AS-Inject-Bearer: GITHUB_TOKEN\r\n"
        f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    reader, writer = await _raw_exchange(env, head)
    # The agent is told to go on before it sends a byte of its body, sooner than the 1 s
    # curl waits before sending anyway.
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.9)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line.startswith(b"HTTP/1.1 200")
    headers = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    length = int(headers.split("content-length: ")[1].split("\r\n")[0])
    echoed = await reader.readexactly(length)
    writer.close()
    assert b'"body":"' + body + b'"' in echoed
    # The proxy answered the expectation itself; the upstream never sees it.
    assert b"expect" not in echoed.lower()


async def test_unknown_expectation_is_refused(env: Env) -> None:
    head = (
        f"POST /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nX-AS-Agent-Token: {env.token}\r\n"
        f"X-AS-Target-URL: {env.base}/echo\r\nX-AS-Inject-Bearer: GITHUB_TOKEN\r\n"
        "Expect: teapot\r\nContent-Length: 3\r\n\r\nabc"
    )
    reader, writer = await _raw_exchange(env, head)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 400")
    assert env.upstream.app[HITS] == []
