"""The attack corpus: each test tries to get a value out, or a request somewhere it must
not go, the way reviewers attack credential proxies. Every one must fail to leak."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from blindkey.proxy.server import ProxyServer
from tests.proxy.conftest import OTHER, SECRET, Env, open_env
from tests.upstream import HITS, STORED, start_upstream

LEAKS = (SECRET.encode(), base64.b64encode(SECRET.encode()), SECRET.encode().hex().encode())


def assert_no_leak(*blobs: bytes | str) -> None:
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        for leak in LEAKS:
            assert leak not in data


async def call(
    env: Env, target: str, *, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    return await env.call(method, headers=env.to(target, **headers))


def error_code(body: bytes) -> str:
    return str(orjson.loads(body)["error"])


# Targets that try to slip past the allowlist -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "url", "code"),
    [
        ("userinfo_confusion", "http://127.0.0.1:{port}@evil.example/", "bad_request"),
        ("userinfo_with_password", "http://a:b@127.0.0.1:{port}/", "bad_request"),
        ("decimal_ipv4", "http://2130706433:{port}/", "bad_request"),
        ("octal_ipv4", "http://0177.0.0.1:{port}/", "bad_request"),
        ("hex_ipv4", "http://0x7f.1:{port}/", "bad_request"),
        ("short_ipv4", "http://127.1:{port}/", "bad_request"),
        ("ipv4_mapped_ipv6_literal", "http://[::ffff:127.0.0.1]:{port}/", "host_not_allowed"),
        ("other_loopback_address", "http://127.0.0.2:{port}/", "host_not_allowed"),
        ("wrong_scheme_same_host", "https://127.0.0.1:{port}/", "host_not_allowed"),
        ("default_port_instead_of_explicit", "http://127.0.0.1/", "host_not_allowed"),
        ("cloud_metadata_literal", "http://169.254.169.254/latest/meta-data/", "host_not_allowed"),
        ("cyrillic_homograph", "http://\u0430pi.github.com/", "host_not_allowed"),  # Cyrillic a
        ("backslash_authority", "http://127.0.0.1:{port}\\@evil.example/", "bad_request"),
        ("empty_host", "http://:{port}/", "bad_request"),
        ("non_http_scheme", "gopher://127.0.0.1:{port}/", "bad_request"),
    ],
)
async def test_target_evasion(env: Env, name: str, url: str, code: str) -> None:
    status, _, body = await call(
        env, url.format(port=env.upstream_port), X_AS_Inject_Bearer="GITHUB_TOKEN"
    )
    assert status in (400, 403), name
    assert error_code(body) == code, (name, body)
    assert b"X-AS-Inject" not in body  # refused for the target, not for a missing header
    assert env.upstream.app[HITS] == []


async def test_trailing_dot_and_case_reach_the_same_entry_only(env: Env) -> None:
    status, _, _ = await call(
        env, f"HTTP://127.0.0.1.:{env.upstream_port}/echo", X_AS_Inject_Bearer="GITHUB_TOKEN"
    )
    assert status == 200


async def test_proxy_cannot_be_pointed_at_itself(home: Paths) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    own = sock.getsockname()[1]
    sock.close()

    def configure(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].append(f"http://127.0.0.1:{own}")

    def prepare(server: ProxyServer) -> None:
        server.requested_port = own

    async with open_env(home, configure, prepare) as env:
        status, _, body = await call(
            env, f"http://127.0.0.1:{own}/proxy", X_AS_Inject_Bearer="GITHUB_TOKEN"
        )
        assert (status, error_code(body)) == (403, "blocked_address")


# Where a value may travel -------------------------------------------------------------------


async def test_key_bound_to_one_host_never_sent_to_another_allowlisted_host(env: Env) -> None:
    from tests.proxy.conftest import set_secret_policy

    set_secret_policy(env.paths, "GITHUB_TOKEN", hosts=["api.github.com"])
    await env.server.reload()
    status, _, body = await call(env, f"{env.base}/echo", X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert (status, error_code(body)) == (403, "secret_denied")
    assert env.upstream.app[HITS] == []


async def test_redirect_is_not_followed_and_custom_auth_header_not_carried(env: Env) -> None:
    second, second_port = await start_upstream()
    try:

        def configure(document: Any) -> None:
            toml_table(document, "allowlist")["hosts"].append(f"http://127.0.0.1:{second_port}")

        env.configure(configure)
        await env.server.reload()
        target = f"{env.base}/redirect?to=http://127.0.0.1:{second_port}/steal"
        status, headers, _ = await call(
            env, target, **{"X-AS-Inject-Header-X-Api-Key": "GITHUB_TOKEN"}
        )
        assert status == 302
        assert_no_leak(headers["Location"])
        await asyncio.sleep(0.2)
        assert second.app[HITS] == []
    finally:
        await second.cleanup()


class RebindingResolver(AbstractResolver):
    """Answers an allowed address first and loopback after, as a rebinding DNS server does.

    A substitute for DNS answers, which cannot be forged on this machine otherwise.
    """

    def __init__(self, first: str, then: str) -> None:
        self.answers = [first, then]
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers[min(self.calls, 1)]
        self.calls += 1
        return [
            ResolveResult(
                hostname=host, host=address, port=port, family=socket.AF_INET, proto=0, flags=0
            )
        ]

    async def close(self) -> None:
        return None


async def test_dns_rebinding_never_reaches_loopback(home: Paths) -> None:
    # The "public" service lives on 127.0.0.2 (admitted by private_ranges); the victim on
    # 127.0.0.1 listens on the same port and must never see a request.
    public, port = await start_upstream("127.0.0.2")
    victim, _ = await start_upstream("127.0.0.1", port)
    resolver = RebindingResolver("127.0.0.2", "127.0.0.1")

    def configure(document: Any) -> None:
        section = toml_table(document, "allowlist")
        section["hosts"].append(f"http://rebind.test:{port}")
        section["private_ranges"] = string_array(["127.0.0.2/32"])

    def prepare(server: ProxyServer) -> None:
        server.runtime.inner_resolver = resolver

    try:
        async with open_env(home, configure, prepare) as env:
            outcomes = []
            for _ in range(5):
                status, _, body = await call(
                    env,
                    f"http://rebind.test:{port}/echo?close=1",
                    X_AS_Inject_Bearer="GITHUB_TOKEN",
                )
                # `close=1`: the upstream hangs up, so each call dials (and resolves) anew.
                outcomes.append(status if status == 200 else error_code(body))
            assert resolver.calls >= 2
            assert outcomes[0] == 200
            assert set(outcomes[1:]) <= {200, "blocked_address"}
    finally:
        assert victim.app[HITS] == []
        await victim.cleanup()
        await public.cleanup()


async def test_narrowed_private_ranges_drop_pooled_connections(home: Paths) -> None:
    # A pooled keep-alive connection was vetted under the old rules; once the range that
    # admitted its address is gone, the next call must be vetted again, not reuse it.
    service, port = await start_upstream("127.0.0.2")
    resolver = RebindingResolver("127.0.0.2", "127.0.0.2")

    def configure(document: Any) -> None:
        section = toml_table(document, "allowlist")
        section["hosts"].append(f"http://svc.test:{port}")
        section["private_ranges"] = string_array(["127.0.0.2/32"])

    def prepare(server: ProxyServer) -> None:
        server.runtime.inner_resolver = resolver

    def narrow(document: Any) -> None:
        toml_table(document, "allowlist")["private_ranges"] = string_array([])

    try:
        async with open_env(home, configure, prepare) as env:
            status, _, _ = await call(
                env, f"http://svc.test:{port}/echo", X_AS_Inject_Bearer="GITHUB_TOKEN"
            )
            assert status == 200
            env.configure(narrow)
            assert await env.server.reload()
            status, _, body = await call(
                env, f"http://svc.test:{port}/echo", X_AS_Inject_Bearer="GITHUB_TOKEN"
            )
            assert (status, error_code(body)) == (403, "blocked_address")
            assert resolver.calls == 2
    finally:
        await service.cleanup()


# What comes back ---------------------------------------------------------------------------


async def test_echo_in_every_encoding_is_redacted(env: Env) -> None:
    status, _, body = await call(env, f"{env.base}/reflect", X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert status == 200
    assert body.count(b"[REDACTED:GITHUB_TOKEN]") >= 11
    for line in body.split(b"\n"):
        # What survives a marker: base64 characters that also carry neighbouring bytes
        # (two each side, a few bits of the value) and padding.
        assert len(line.replace(b"[REDACTED:GITHUB_TOKEN]", b"").rstrip(b"=")) <= 4, line
    assert_no_leak(body)


async def test_key_stored_by_an_earlier_call_is_redacted_too(env: Env) -> None:
    env.upstream.app[STORED]["value"] = OTHER
    status, _, body = await call(env, f"{env.base}/stored", X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert status == 200
    assert OTHER.encode() not in body
    assert b"[REDACTED:STRIPE_KEY]" in body


async def test_agent_asks_for_gzip_but_body_is_still_scanned(env: Env) -> None:
    status, headers, body = await call(
        env, f"{env.base}/gzip", X_AS_Inject_Bearer="GITHUB_TOKEN", **{"Accept-Encoding": "gzip"}
    )
    assert status == 200
    assert "Content-Encoding" not in headers
    assert b"[REDACTED:GITHUB_TOKEN]" in body
    assert_no_leak(body)


async def test_gzip_bomb_streams_without_buffering(env: Env) -> None:
    headers = {
        "X-AS-Agent-Token": env.token,
        "X-AS-Target-URL": f"{env.base}/bomb?mb=200",
        "X-AS-Inject-Bearer": "GITHUB_TOKEN",
    }
    received = 0
    async with env.session.get(env.url, headers=headers) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            received += len(chunk)
    assert received == 200 * 2**20


async def test_secret_with_line_break_cannot_split_headers(env: Env) -> None:
    from blindkey.broker.vault import FileVault

    FileVault(env.paths).set("development", "CRLF_VALUE", "abcdefgh\r\nX-Injected: yes")
    await env.server.reload()
    status, _, body = await call(
        env, f"{env.base}/echo", **{"X-AS-Inject-Header-X-Key": "CRLF_VALUE"}
    )
    assert (status, error_code(body)) == (400, "bad_request")
    assert env.upstream.app[HITS] == []


async def test_upstream_with_huge_header_is_an_upstream_error(env: Env) -> None:
    status, _, body = await call(env, f"{env.base}/huge-header", X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert (status, error_code(body)) == (502, "upstream_error")


# Limits -------------------------------------------------------------------------------------


async def test_too_many_headers_refused(env: Env) -> None:
    headers = {f"X-Filler-{i}": "x" for i in range(150)}
    status, response_headers, body = await call(
        env, f"{env.base}/echo", X_AS_Inject_Bearer="GITHUB_TOKEN", **headers
    )
    assert (status, error_code(body)) == (400, "bad_request")
    assert response_headers["X-Blindkey-Request-Id"]
    assert env.upstream.app[HITS] == []


async def test_oversized_header_refused(env: Env) -> None:
    status, _, _ = await call(
        env, f"{env.base}/echo", X_AS_Inject_Bearer="GITHUB_TOKEN", X_Big="y" * 20000
    )
    assert status == 400
    assert env.upstream.app[HITS] == []


@pytest.fixture
async def tight(home: Paths) -> AsyncIterator[Env]:
    def configure(document: Any) -> None:
        limits = toml_table(document, "limits")
        limits["max_connections"] = 4
        limits["header_read_timeout"] = "500ms"
        limits["upstream_total_timeout"] = "1s"
        limits["upstream_connect_timeout"] = "500ms"

    async with open_env(home, configure) as env:
        yield env


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), timeout=seconds)
    except TimeoutError:
        return False
    return data == b"" or data.startswith(b"HTTP/1.1 4")


async def test_slowloris_connection_is_closed(tight: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    began = time.monotonic()
    closed = False
    for _ in range(20):
        writer.write(b"X")
        await writer.drain()
        if await _closed_within(reader, 0.1):
            closed = True
            break
    assert closed
    assert time.monotonic() - began < 1.5
    # Closed by the header deadline, not by anything else along the way.
    guard = tight.server.guard
    assert guard is not None
    assert guard.timed_out == 1
    writer.close()


async def test_at_the_cap_a_half_sent_head_gives_way_to_a_new_caller(tight: Env) -> None:
    held = [await asyncio.open_connection("127.0.0.1", tight.server.port) for _ in range(4)]
    for _, writer in held:
        writer.write(b"G")  # each has begun a request; none completes
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    guard = tight.server.guard
    assert guard is not None
    assert (guard.evicted, guard.refused) == (1, 0)
    assert await _closed_within(held[0][0], 1.0)  # the oldest head made room
    writer.close()
    for _, held_writer in held:
        held_writer.close()


async def test_connection_cap_refuses_the_extra_connection_when_all_are_in_calls(
    tight: Env,
) -> None:
    streams = []
    for _ in range(4):  # four agent calls streaming: none can give way
        reader, writer = await asyncio.open_connection("127.0.0.1", tight.server.port)
        writer.write(
            (
                f"GET /proxy HTTP/1.1\r\nHost: 127.0.0.1\r\nX-AS-Agent-Token: {tight.token}\r\n"
                f"X-AS-Target-URL: {tight.base}/sse\r\nX-AS-Inject-Bearer: GITHUB_TOKEN\r\n\r\n"
            ).encode()
        )
        await reader.readuntil(b"data: first")
        streams.append(writer)
    reader, writer = await asyncio.open_connection("127.0.0.1", tight.server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert await _closed_within(reader, 1.0)
    guard = tight.server.guard
    assert guard is not None
    assert guard.refused == 1
    writer.close()
    tight.release_sse()
    for stream in streams:
        stream.close()


async def test_total_timeout_cuts_an_endless_stream(tight: Env) -> None:
    headers = {
        "X-AS-Agent-Token": tight.token,
        "X-AS-Target-URL": f"{tight.base}/drip?n=100",
        "X-AS-Inject-Bearer": "GITHUB_TOKEN",
    }
    began = time.monotonic()
    received = bytearray()

    async def read_into(response: aiohttp.ClientResponse) -> None:
        async for chunk in response.content.iter_any():
            received.extend(chunk)

    async with tight.session.get(tight.url, headers=headers) as response:
        assert response.status == 200
        # Cut, not ended: a clean end of a short body would pass it off as the whole answer.
        with pytest.raises(aiohttp.ClientPayloadError, match="not completed"):
            await read_into(response)
    assert time.monotonic() - began < 3
    assert 0 < len(received) < 100


async def test_connect_timeout_is_504(tight: Env) -> None:
    # A listener that never accepts: once its queue is full, new SYNs go unanswered.
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    port = stuck.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)

        def allow(document: Any) -> None:
            toml_table(document, "allowlist")["hosts"].append(f"http://127.0.0.1:{port}")

        tight.configure(allow)
        await tight.server.reload()
        status, _, body = await call(
            tight, f"http://127.0.0.1:{port}/x", X_AS_Inject_Bearer="GITHUB_TOKEN"
        )
        assert (status, error_code(body)) == (504, "upstream_timeout")
    finally:
        for filler in fillers:
            filler.close()
        stuck.close()


# The parser under fuzz, against the live proxy -------------------------------------------------

fuzz_header = st.tuples(
    st.sampled_from(
        [
            "X-AS-Target-URL",
            "X-AS-Method",
            "X-AS-Inject-Bearer",
            "X-AS-Inject-Header-",
            "X-AS-Inject-Query-",
            "X-AS-Inject-Body-",
            "X-AS-Inject-Form-",
            "X-AS-Inject-",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(headers=st.lists(fuzz_header, min_size=1, max_size=5))
async def test_fuzzed_requests_never_500_and_malformed_ones_forward_nothing(
    env: Env, headers: list[tuple[str, str, str]]
) -> None:
    env.upstream.app[HITS].clear()
    sent = {"X-AS-Agent-Token": env.token}
    for prefix, suffix, value in headers:
        name = prefix + suffix if prefix.endswith("-") else prefix
        sent[name] = value
    status, _, body = await env.call(headers=sent)
    assert status < 500 or status in (502, 503, 504)
    if status == 400:
        assert env.upstream.app[HITS] == []
    assert_no_leak(body)
