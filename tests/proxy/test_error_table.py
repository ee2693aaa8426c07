"""Every row of INTERFACE.md's error table, produced for real, with the JSON shape it promises."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from blindkey.broker.agents import AgentStore
from blindkey.config.edit import string_array, toml_table
from tests.proxy.conftest import (
    OTHER,
    SECRET,
    Env,
    eventually_status,
    set_secret_policy,
    status_after_reload,
)
from tests.upstream import HITS


def assert_error(
    status: int, headers: dict[str, str], body: bytes, code: str, expected: int
) -> dict[str, Any]:
    assert status == expected, body
    assert headers["Content-Type"].startswith("application/json")
    error = orjson.loads(body)
    # INTERFACE.md: a refusal for want of a grant also names the request a human approves.
    approval = {"approval_id"} if code in ("approval_required", "approval_denied") else set()
    assert set(error) == {"error", "message", "request_id"} | approval
    assert error["error"] == code
    assert error["request_id"] == headers["X-Blindkey-Request-Id"]
    for value in (SECRET, OTHER):
        assert value.encode() not in body
    return dict(error)


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"X-AS-Inject-Bearer": "GITHUB_TOKEN"}, "X-AS-Target-URL is required"),
        ({"X-AS-Target-URL": "/relative/path", "X-AS-Inject-Bearer": "GITHUB_TOKEN"}, "absolute"),
        ({"X-AS-Target-URL": "ftp://127.0.0.1/x", "X-AS-Inject-Bearer": "GITHUB_TOKEN"}, "http"),
        ({"X-AS-Target-URL": "file:///etc/passwd", "X-AS-Inject-Bearer": "GITHUB_TOKEN"}, "http"),
        ({"X-AS-Target-URL": "http://127.0.0.1:1/"}, "X-AS-Inject"),
        (
            {"X-AS-Target-URL": "http://127.0.0.1:1/", "X-AS-Inject-Bearer": "BAD NAME"},
            "secret name",
        ),
        (
            {"X-AS-Target-URL": "http://127.0.0.1:1/", "X-AS-Inject-Cookie-x": "GITHUB_TOKEN"},
            "unknown",
        ),
        (
            {"X-AS-Target-URL": "http://user@127.0.0.1:1/", "X-AS-Inject-Bearer": "GITHUB_TOKEN"},
            "userinfo",
        ),
        ({"X-AS-Target-URL": "http://2130706433/", "X-AS-Inject-Bearer": "GITHUB_TOKEN"}, "IPv4"),
        (
            {"X-AS-Target-URL": "http://127.0.0.1:99999/", "X-AS-Inject-Bearer": "GITHUB_TOKEN"},
            "port",
        ),
    ],
)
async def test_bad_request(env: Env, headers: dict[str, str], fragment: str) -> None:
    status, response_headers, body = await env.call(
        headers={"X-AS-Agent-Token": env.token, **headers}
    )
    error = assert_error(status, response_headers, body, "bad_request", 400)
    assert fragment in error["message"]


async def test_unknown_path_is_bad_request(env: Env) -> None:
    async with env.session.get(f"http://127.0.0.1:{env.server.port}/nope") as response:
        assert_error(
            response.status, dict(response.headers), await response.read(), "bad_request", 400
        )


async def test_missing_token(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    del headers["X-AS-Agent-Token"]
    assert_error(*await env.call(headers=headers), "unauthenticated", 401)


async def test_unknown_token(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    headers["X-AS-Agent-Token"] = "bk_" + "A" * 43
    assert_error(*await env.call(headers=headers), "unauthenticated", 401)


async def test_revoked_token_stops_within_a_second(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert (await env.call(headers=headers))[0] == 200
    AgentStore(env.paths.agents_file, env.paths.lock_file).revoke("tester")
    assert await eventually_status(env, 401, headers) < 1.0


async def test_host_not_allowed(env: Env) -> None:
    for target in (
        f"http://127.0.0.1:{env.upstream_port + 1}/",
        f"https://127.0.0.1:{env.upstream_port}/",
        "https://api.github.com/user",
    ):
        headers = {
            "X-AS-Agent-Token": env.token,
            "X-AS-Target-URL": target,
            "X-AS-Inject-Bearer": "GITHUB_TOKEN",
        }
        assert_error(*await env.call(headers=headers), "host_not_allowed", 403)


async def test_allowlisted_name_resolving_to_loopback_is_blocked(env: Env) -> None:
    def change(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].append(f"http://localhost:{env.upstream_port}")

    env.configure(change)
    headers = {
        "X-AS-Agent-Token": env.token,
        "X-AS-Target-URL": f"http://localhost:{env.upstream_port}/echo",
        "X-AS-Inject-Bearer": "GITHUB_TOKEN",
    }
    await eventually_status(env, 403, headers, code="blocked_address")
    assert_error(*await env.call(headers=headers), "blocked_address", 403)


async def test_private_ranges_permit_a_resolved_loopback(env: Env) -> None:
    def change(document: Any) -> None:
        section = toml_table(document, "allowlist")
        section["hosts"].append(f"http://localhost:{env.upstream_port}")
        section["private_ranges"] = string_array(["127.0.0.0/8"])

    env.configure(change)
    headers = {
        "X-AS-Agent-Token": env.token,
        "X-AS-Target-URL": f"http://localhost:{env.upstream_port}/echo",
        "X-AS-Inject-Bearer": "GITHUB_TOKEN",
    }
    await eventually_status(env, 200, headers)


@pytest.mark.parametrize(
    ("policy", "code"),
    [
        ({"hosts": ["api.github.com"]}, "secret_denied"),
        ({"agents": ["someone-else"]}, "secret_denied"),
        ({"release": ["env"]}, "secret_denied"),
        ({"tier": "controlled"}, "approval_required"),
        ({"tier": "restricted"}, "approval_required"),
    ],
)
async def test_policy_refusals(env: Env, policy: dict[str, Any], code: str) -> None:
    set_secret_policy(env.paths, "GITHUB_TOKEN", **policy)
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await eventually_status(env, 403, headers, code=code)
    assert_error(*await env.call(headers=headers), code, 403)


async def test_secret_bound_to_another_host_never_reaches_this_one(env: Env) -> None:
    # Both hosts are allowlisted; the key is bound to one of them only.
    set_secret_policy(env.paths, "STRIPE_KEY", hosts=[f"http://localhost:{env.upstream_port}"])
    headers = env.headers(X_AS_Inject_Bearer="STRIPE_KEY")
    await status_after_reload(env, 403, headers)
    assert_error(*await env.call(headers=headers), "secret_denied", 403)


# The browser gate, header set by header set: what a page can make a browser send is
# refused, what agents' HTTP clients send passes (tests/e2e/test_browsers.py drives the
# real Node and Chromium).
GATE_PASSES = [
    pytest.param([], id="python-client"),
    pytest.param([("User-Agent", "curl/8.5.0"), ("Accept", "*/*")], id="curl"),
    pytest.param(
        [("Sec-Fetch-Mode", "cors"), ("Accept-Language", "*"), ("User-Agent", "node")],
        id="node-fetch-undici",
    ),
    pytest.param([("Sec-Fetch-Mode", "no-cors"), ("Sec-Fetch-Dest", "empty")], id="mode-dest"),
    pytest.param(
        [
            ("Sec-Fetch-Site", "none"),
            ("Sec-Fetch-Mode", "navigate"),
            ("Sec-Fetch-Dest", "document"),
            ("Sec-Fetch-User", "?1"),
        ],
        id="user-typed-navigation",
    ),
]
GATE_REFUSES = [
    pytest.param([("Origin", "https://evil.example")], id="cross-site-origin"),
    pytest.param([("Origin", "null")], id="opaque-origin"),
    pytest.param([("Origin", "http://127.0.0.1:8765")], id="proxy-own-origin"),
    pytest.param([("Origin", "")], id="empty-origin"),
    pytest.param(
        [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "no-cors")], id="no-cors-get"
    ),
    pytest.param([("Sec-Fetch-Site", "same-site")], id="page-on-another-local-port"),
    pytest.param([("Sec-Fetch-Site", "same-origin")], id="page-on-the-proxy-origin"),
    pytest.param([("Sec-Fetch-Site", "none"), ("Origin", "null")], id="none-with-origin"),
    pytest.param(
        [("Sec-Fetch-Site", "none"), ("Sec-Fetch-Site", "cross-site")], id="second-site-header"
    ),
    pytest.param([("Host", "evil.example")], id="rebound-name"),
    pytest.param([("Host", "evil.example:8765")], id="rebound-name-port"),
    pytest.param([("Host", "127.0.0.1.nip.io")], id="name-of-loopback"),
]


async def gate_call(env: Env, extra: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    headers = CIMultiDict(env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    for name, value in extra:
        if name == "Host":
            headers[name] = value
        else:
            headers.add(name, value)
    async with env.session.get(env.url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize("extra", GATE_PASSES)
async def test_gate_passes_what_agents_send(env: Env, extra: list[tuple[str, str]]) -> None:
    status, headers, body = await gate_call(env, extra)
    assert status == 200, body
    sent = hashlib.sha256(f"Bearer {SECRET}".encode()).hexdigest()
    assert headers["X-Echo-Authorization-Sha256"] == sent


@pytest.mark.parametrize("extra", GATE_REFUSES)
async def test_gate_refuses_what_pages_make_browsers_send(
    env: Env, extra: list[tuple[str, str]]
) -> None:
    status, headers, body = await gate_call(env, extra)
    assert_error(status, headers, body, "forbidden_origin", 403)
    assert env.upstream.app[HITS] == []
    # The attempt is on the audit record, as every refusal is.
    await env.server.audit.flush()
    last = orjson.loads((env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()[-1])
    assert last["request_id"] == headers["X-Blindkey-Request-Id"]
    assert (last["decision"], last["reason"], last["status"]) == (
        "blocked",
        "forbidden_origin",
        403,
    )
    assert last["url"] == f"{env.base}/echo" and last["secrets"] == []


async def test_loopback_host_headers_are_accepted(env: Env) -> None:
    for host in (
        "localhost",
        f"localhost:{env.server.port}",
        "127.0.0.1",
        f"[::1]:{env.server.port}",
    ):
        headers = {**env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"), "Host": host}
        assert (await env.call(headers=headers))[0] == 200, host


async def test_unknown_secret(env: Env) -> None:
    assert_error(
        *await env.call(headers=env.headers(X_AS_Inject_Bearer="NOPE")), "unknown_secret", 404
    )


async def test_body_too_large(env: Env) -> None:
    headers = env.headers(**{"X-AS-Inject-Body-token": "GITHUB_TOKEN"})
    big = b'{"pad": "' + b"x" * (65 * 1024) + b'"}'
    assert_error(*await env.call("POST", headers=headers, data=big), "body_too_large", 413)

    async def endless() -> Any:
        for _ in range(100):
            yield b"x" * 4096

    assert_error(*await env.call("POST", headers=headers, data=endless()), "body_too_large", 413)


async def test_upstream_reset(env: Env) -> None:
    error = assert_error(
        *await env.call(
            headers=env.headers("/reset?k=v", **{"X-AS-Inject-Query-k": "GITHUB_TOKEN"})
        ),
        "upstream_error",
        502,
    )
    assert "/reset" not in error["message"] and "k=" not in error["message"]


async def test_upstream_dns_failure(env: Env) -> None:
    def change(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].append("http://no-such-host.invalid")

    env.configure(change)
    headers = {
        "X-AS-Agent-Token": env.token,
        "X-AS-Target-URL": "http://no-such-host.invalid/x?q=1",
        "X-AS-Inject-Query-q": "GITHUB_TOKEN",
    }
    await eventually_status(env, 502, headers, timeout=3.0)
    error = assert_error(*await env.call(headers=headers), "upstream_error", 502)
    assert "q=" not in error["message"]


async def test_upstream_timeout(env: Env) -> None:
    headers = env.headers("/hang?t=x", **{"X-AS-Inject-Query-t": "GITHUB_TOKEN"})
    error = assert_error(*await env.call(headers=headers), "upstream_timeout", 504)
    assert "t=" not in error["message"]


async def test_unscannable_encoding_is_refused(env: Env) -> None:
    assert_error(
        *await env.call(headers=env.headers("/br", X_AS_Inject_Bearer="GITHUB_TOKEN")),
        "upstream_error",
        502,
    )


async def test_killed_broker_gives_503_then_recovers_within_two_seconds(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert (await env.call(headers=headers))[0] == 200
    pid = env.server.supervisor.process.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.05)
    assert_error(*await env.call(headers=headers), "broker_unavailable", 503)
    assert await eventually_status(env, 200, headers, timeout=2.0) < 2.0
    assert env.server.supervisor.process.pid != pid  # type: ignore[union-attr]


async def test_anonymous_callers_when_tokens_are_not_required(env: Env) -> None:
    def change(document: Any) -> None:
        toml_table(document, "proxy")["require_agent_token"] = False

    env.configure(change)
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    del headers["X-AS-Agent-Token"]
    await status_after_reload(env, 200, headers)
    await env.server.audit.flush()
    last = orjson.loads((env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()[-1])
    assert last["agent"] == "anonymous" and last["decision"] == "allowed"
