"""What comes back: redirects untouched but redacted, compressed and chunked echoes, streams."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import quote

from tests.proxy.conftest import SECRET, Env


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
