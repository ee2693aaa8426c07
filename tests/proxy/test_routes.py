"""/r/NAME/... routes: the agent token where the SDK puts its key, replaced by the value,
under every check /proxy makes; what the upstream received is read from its own log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from yarl import URL

from blindkey.broker.notify import put_in_force
from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import BASIC, OTHER, SECRET, Env, open_env, set_secret_policy
from tests.upstream import HITS

Hit = tuple[str, str, dict[str, str]]


def _routes(port: int) -> dict[str, dict[str, str]]:
    base = f"http://127.0.0.1:{port}"
    return {
        "echo": {"to": f"{base}/v1", "inject": "bearer", "secret": "GITHUB_TOKEN"},
        "root": {"to": base, "inject": "bearer", "secret": "GITHUB_TOKEN"},
        "keyed": {"to": base, "inject": "header", "secret": "STRIPE_KEY", "name": "x-api-key"},
        "query": {"to": base, "inject": "query", "secret": "STRIPE_KEY", "name": "key"},
        "basic": {"to": base, "inject": "basic", "secret": "BASIC_PAIR"},
        # Same address, another port: not on the allowlist.
        "elsewhere": {"to": "http://127.0.0.1:9", "inject": "bearer", "secret": "GITHUB_TOKEN"},
    }


@pytest.fixture
async def routed(home: Paths) -> AsyncIterator[Env]:
    port_box: list[int] = []

    def configure(document: Any) -> None:
        hosts = document["allowlist"]["hosts"]
        port_box.append(int(str(hosts[0]).rsplit(":", 1)[1]))
        for name, fields in _routes(port_box[0]).items():
            section = toml_table(document, "routes", name)
            for key, value in fields.items():
                section[key] = value

    async with open_env(home, configure) as env:
        yield env


def hits(env: Env) -> list[Hit]:
    found: list[Hit] = env.upstream.app[HITS]
    return found


async def send(
    env: Env, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    # encoded: the path goes out exactly as written (no dot-segment folding, no requoting).
    url = URL(f"http://127.0.0.1:{env.server.port}{path}", encoded=True)
    async with env.session.request(method, url, headers=headers, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_bearer_route_replaces_the_agent_token_with_the_value(routed: Env) -> None:
    env = routed
    status, headers, body = await send(
        env,
        "POST",
        "/r/echo/things?a=1&b=%2F",
        {"Authorization": f"Bearer {env.token}", "Content-Type": "application/json"},
        data=b'{"model": "m"}',
    )
    assert status == 200, body
    assert headers["X-Echo-Authorization-Sha256"] == sha(f"Bearer {SECRET}")
    echoed = orjson.loads(body)
    assert echoed["path"] == "/v1/things?a=1&b=%2F"
    assert echoed["body"] == '{"model": "m"}'
    # The value came back in the echo: redacted, like any /proxy answer.
    assert SECRET not in body.decode() and "[REDACTED:GITHUB_TOKEN]" in body.decode()
    ((method, path, sent),) = hits(env)
    assert (method, path) == ("POST", "/v1/things?a=1&b=%2F")
    assert env.token not in repr(sent)
    assert sent["Authorization"] == f"Bearer {SECRET}"
    assert sent["Host"] == f"127.0.0.1:{env.upstream_port}"


async def test_the_route_root_and_a_trailing_slash(routed: Env) -> None:
    env = routed
    auth = {"Authorization": f"Bearer {env.token}"}
    for path, upstream_path in [("/r/root", "/"), ("/r/echo/", "/v1/"), ("/r/echo/x/", "/v1/x/")]:
        status, _, body = await send(env, "GET", path, auth)
        assert status == 200, body
        assert orjson.loads(body)["path"] == upstream_path


async def test_x_as_agent_token_works_and_the_sdk_placeholder_never_leaves(routed: Env) -> None:
    env = routed
    status, headers, _ = await send(
        env,
        "GET",
        "/r/echo/models",
        {"X-AS-Agent-Token": env.token, "Authorization": "Bearer placeholder-key"},
    )
    assert status == 200
    assert headers["X-Echo-Authorization-Sha256"] == sha(f"Bearer {SECRET}")
    ((_, _, sent),) = hits(env)
    assert "placeholder-key" not in repr(sent)
    assert env.token not in repr(sent)
    assert not any(name.lower().startswith("x-as-") for name in sent)


async def test_header_route_takes_the_token_from_that_header(routed: Env) -> None:
    env = routed
    status, _, body = await send(env, "GET", "/r/keyed/v1/messages", {"X-Api-Key": env.token})
    assert status == 200, body
    ((_, path, sent),) = hits(env)
    assert path == "/v1/messages"
    assert sent["x-api-key"] == OTHER
    assert env.token not in repr(sent)
    assert "[REDACTED:STRIPE_KEY]" in body.decode() and OTHER not in body.decode()


async def test_query_route_takes_the_token_from_its_parameter(routed: Env) -> None:
    env = routed
    status, _, body = await send(env, "GET", f"/r/query/search?q=cats&key={env.token}")
    assert status == 200, body
    ((_, path, _),) = hits(env)
    assert path == f"/search?q=cats&key={OTHER}"
    await env.server.audit.flush()
    audit = (env.paths.audit_dir / "audit.jsonl").read_text()
    record = orjson.loads(audit.splitlines()[-1])
    assert record["url"] == f"http://127.0.0.1:{env.upstream_port}/search?q=cats&key={{STRIPE_KEY}}"
    assert env.token not in audit and OTHER not in audit


async def test_basic_route_takes_the_token_as_the_password(routed: Env) -> None:
    env = routed
    pair = base64.b64encode(f"anyone:{env.token}".encode()).decode()
    status, headers, _ = await send(env, "GET", "/r/basic/x", {"Authorization": f"Basic {pair}"})
    assert status == 200
    expected = base64.b64encode(BASIC.encode()).decode()
    assert headers["X-Echo-Authorization-Sha256"] == sha(f"Basic {expected}")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Token placeholder"},
        {"X-AS-Agent-Token": "wrong"},
    ],
)
async def test_a_missing_or_wrong_token_is_401_and_nothing_leaves(
    routed: Env, headers: dict[str, str]
) -> None:
    status, _, body = await send(routed, "POST", "/r/echo/chat", headers, data=b"{}")
    assert (status, orjson.loads(body)["error"]["code"]) == (401, "unauthenticated")
    assert hits(routed) == []


async def test_a_wrong_token_in_the_sdk_slot_of_a_header_route_is_401(routed: Env) -> None:
    status, _, _ = await send(routed, "GET", "/r/keyed/x", {"x-api-key": "sk-wrong"})
    assert status == 401
    status, _, _ = await send(routed, "GET", "/r/query/x?key=sk-wrong")
    assert status == 401
    assert hits(routed) == []


async def test_refusals_of_proxy_apply_to_routes(routed: Env) -> None:
    env = routed
    auth = {"Authorization": f"Bearer {env.token}"}
    status, _, body = await send(env, "GET", "/r/elsewhere/x", auth)
    assert (status, orjson.loads(body)["error"]["code"]) == (403, "host_not_allowed")
    policies: list[tuple[dict[str, Any], str]] = [
        ({"hosts": ["api.github.com"]}, "secret_denied"),  # bound to another host
        ({"hosts": [], "tier": "restricted"}, "approval_required"),
        ({"tier": "open", "release": ["env"]}, "secret_denied"),  # not released to the proxy
    ]
    for policy, code in policies:
        set_secret_policy(env.paths, "GITHUB_TOKEN", **policy)
        await asyncio.to_thread(put_in_force, env.paths, None, "policy", config=True)
        status, _, body = await send(env, "GET", "/r/echo/x", auth)
        assert (status, orjson.loads(body)["error"]["code"]) == (403, code)
    assert hits(env) == []


@pytest.mark.parametrize(
    ("path", "headers", "fragment"),
    [
        ("/r/echo/../admin", {}, "'..' segments"),
        ("/r/echo/a/%2e%2E/admin", {}, "'..' segments"),
        ("/r/echo/x", {"X-AS-Target-URL": "http://evil.example/"}, "does not apply to a route"),
        ("/r/echo/x", {"X-AS-Inject-Header-X": "STRIPE_KEY"}, "does not apply to a route"),
        ("/r", {}, "serves /proxy, /r/NAME/..."),
    ],
)
async def test_bad_route_calls_are_400_and_nothing_leaves(
    routed: Env, path: str, headers: dict[str, str], fragment: str
) -> None:
    headers = {"Authorization": f"Bearer {routed.token}", **headers}
    status, _, body = await send(routed, "GET", path, headers)
    answer = orjson.loads(body)
    # Under /r/ the error is shaped for SDKs; a bare /r is no route, and answers plainly.
    error = answer["error"] if path.startswith("/r/") else answer
    assert (status, error["code"] if "code" in error else error["error"]) == (400, "bad_request")
    assert fragment in error["message"]
    assert hits(routed) == []


async def test_an_unknown_route_is_404_unknown_route(routed: Env) -> None:
    """A client expects 404 for a path that names nothing (issue: it was 400)."""
    headers = {"Authorization": f"Bearer {routed.token}"}
    status, _, body = await send(routed, "GET", "/r/nosuch/x", headers)
    error = orjson.loads(body)["error"]
    assert (status, error["code"]) == (404, "unknown_route")
    assert "no route named 'nosuch'" in error["message"]
    assert hits(routed) == []


async def test_sse_streams_through_a_route(routed: Env) -> None:
    env = routed
    url = f"http://127.0.0.1:{env.server.port}/r/root/sse"
    async with env.session.get(url, headers={"Authorization": f"Bearer {env.token}"}) as response:
        assert response.status == 200
        # The first event arrives while the upstream still holds the second back.
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        env.release_sse()
        assert await response.content.read() == b"data: second\n\n"


async def test_route_records_name_the_route_target_and_the_agent(routed: Env) -> None:
    env = routed
    await send(env, "GET", "/r/echo/x?y=1", {"Authorization": f"Bearer {env.token}"})
    await send(env, "GET", "/r/elsewhere/x", {"Authorization": f"Bearer {env.token}"})
    await env.server.audit.flush()
    lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
    allowed, blocked = (orjson.loads(line) for line in lines[-2:])
    assert allowed["url"] == f"http://127.0.0.1:{env.upstream_port}/v1/x?y=1"
    assert (allowed["agent"], allowed["secrets"], allowed["styles"]) == (
        "tester",
        ["GITHUB_TOKEN"],
        ["bearer"],
    )
    assert (blocked["url"], blocked["reason"]) == ("http://127.0.0.1:9/x", "host_not_allowed")
    assert env.token not in repr(lines)


async def test_a_remote_only_proxy_accepts_the_token_in_the_sdk_slot(home: Paths) -> None:
    """With allow_remote, nobody is anonymous: the token in Authorization counts as sent."""

    def configure(document: Any) -> None:
        port = int(str(document["allowlist"]["hosts"][0]).rsplit(":", 1)[1])
        toml_table(document, "proxy")["allow_remote"] = True
        toml_table(document, "proxy")["require_agent_token"] = False
        toml_table(document, "proxy")["allowed_peers"] = string_array(["10.0.0.0/8"])
        section = toml_table(document, "routes", "echo")
        section.update(_routes(port)["root"])

    async with open_env(home, configure) as env:
        status, _, _ = await send(env, "GET", "/r/echo/x", {"Authorization": f"Bearer {env.token}"})
        assert status == 200
        status, _, body = await send(env, "GET", "/r/echo/x")
        assert (status, orjson.loads(body)["error"]["code"]) == (401, "unauthenticated")


async def test_a_token_in_a_place_the_route_does_not_read_is_taken_not_passed_on(
    routed: Env,
) -> None:
    """An SDK set up for another kind of route: its key (the token) is still taken out."""
    env = routed
    status, _, body = await send(env, "GET", f"/r/echo/x?key={env.token}", {"X-Api-Key": env.token})
    assert status == 200, body
    ((_, path, sent),) = hits(env)
    assert path == "/v1/x"
    assert env.token not in repr(sent) and "x-api-key" not in {k.lower() for k in sent}
    assert sent["Authorization"] == f"Bearer {SECRET}"
