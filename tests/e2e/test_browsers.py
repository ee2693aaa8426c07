"""Real JavaScript clients against the browser gate.

Agents on Node (built-in fetch, which sends `Sec-Fetch-Mode: cors`, and the http module)
pass and get the key injected. Pages in a real headless Chromium, from another origin
(CSRF) or rebound onto the proxy's own origin (DNS rebinding), are refused 403
`forbidden_origin`, and the upstream never hears of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.e2e.chromium import Chromium
from tests.proxy.conftest import SECRET, Env, open_env
from tests.upstream import HITS

HERE = Path(__file__).parent
BEARER_SHA256 = hashlib.sha256(f"Bearer {SECRET}".encode()).hexdigest()
# The names pages come from resolve to 127.0.0.1; no other name resolves at all.
RESOLVER_RULES = (
    "MAP attacker.test 127.0.0.1",
    "MAP rebind.test 127.0.0.1",
    "MAP * ~NOTFOUND",
    "EXCLUDE 127.0.0.1",
)
REFUSED = ("blocked", "forbidden_origin", 403)


async def audit_records(env: Env) -> list[dict[str, Any]]:
    await env.server.audit.flush()
    lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
    return [orjson.loads(line) for line in lines]


def outcome(record: dict[str, Any]) -> tuple[str, str, str | None, int | None]:
    return record["method"], record["decision"], record["reason"], record["status"]


def call(function: str, argument: dict[str, str]) -> str:
    return f"{function}({orjson.dumps(argument).decode()})"


@pytest.mark.timeout(30)
async def test_node_fetch_and_http_module_get_the_key_injected(home: Paths) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (apt-get install nodejs)")
    async with open_env(home) as env:
        process = await asyncio.create_subprocess_exec(
            node,
            str(HERE / "node_agent.js"),
            env.url,
            env.token,
            f"{env.base}/echo",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(20):
                out, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, err.decode()
    calls = [orjson.loads(line) for line in out.splitlines()]
    assert [(c["client"], c["method"], c["status"]) for c in calls] == [
        ("fetch", "GET", 200),
        ("http", "GET", 200),
        ("fetch", "POST", 200),
        ("http", "POST", 200),
    ]
    sent_body = hashlib.sha256(b'{"question":"who am I?"}').hexdigest()
    for made in calls:
        assert made["authorization_sha256"] == BEARER_SHA256, made
        if made["method"] == "POST":
            assert made["body_sha256"] == sent_body, made
    assert SECRET.encode() not in out


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Chromium]:
    async with Chromium.launch(tmp_path / "chromium-profile", RESOLVER_RULES) as browser:
        yield browser


@contextlib.asynccontextmanager
async def serve_page(page: Path) -> AsyncIterator[int]:
    """A local web server with one page at `/`; yields its port."""

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(page)

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


# What the page itself sees: nothing it can read, whatever the proxy answered.
PAGE_SEES = [
    ["cors POST", "TypeError"],
    ["cors GET with X-AS-*", "TypeError"],
    ["no-cors GET", "opaque"],
    ["no-cors POST", "opaque"],
    ["form POST", "loaded"],
    ["form GET", "loaded"],
    ["no-cors GET by a rebound name", "opaque"],
]
# What reaches the proxy: the preflight instead of the cors GET, every other step itself.
PROXY_SEES = ["POST", "OPTIONS", "GET", "POST", "POST", "GET", "GET"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "page_host",
    [
        pytest.param("attacker.test", id="cross-site"),
        pytest.param("127.0.0.1", id="same-site-other-port"),
    ],
)
async def test_page_of_another_origin_is_refused(
    home: Paths, chromium: Chromium, page_host: str
) -> None:
    async with open_env(home) as env, serve_page(HERE / "attack_page.html") as page_port:
        tab = await chromium.new_tab()
        await tab.open(f"http://{page_host}:{page_port}/")
        target = f"{env.base}/echo"
        rebound = f"http://rebind.test:{env.server.port}/proxy"
        outcomes = await tab.evaluate(
            call("attack", {"proxy": env.url, "rebound": rebound, "target": target})
        )
        records = await audit_records(env)
    assert outcomes == PAGE_SEES
    # Without the gate these would be bad_request (no X-AS-* header survives), not refusals.
    assert [outcome(r) for r in records] == [(method, *REFUSED) for method in PROXY_SEES]
    assert env.upstream.app[HITS] == []


@pytest.mark.timeout(30)
async def test_dns_rebinding_page_on_the_proxy_origin_is_refused(
    home: Paths, chromium: Chromium
) -> None:
    def anonymous(document: Any) -> None:
        # The setting that lets any local caller in: a rebound page needs no token at all.
        toml_table(document, "proxy")["require_agent_token"] = False

    async with open_env(home, configure=anonymous) as env:
        tab = await chromium.new_tab()
        # The page came from evil's server while rebind.test resolved there; now the name
        # resolves to 127.0.0.1 and the page's port is the proxy's. DevTools stands in for
        # that first server, so the page's own requests go to the proxy.
        page = (HERE / "rebound_page.html").read_bytes()
        await tab.open(f"http://rebind.test:{env.server.port}/", document=page)
        target = f"{env.base}/echo"
        answers = await tab.evaluate(call("attack", {"target": target}))
        hits_from_the_page = env.upstream.app[HITS][:]
        records = await audit_records(env)
        # The same call from an agent's HTTP client is served: only the gate stood between.
        headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
        del headers["X-AS-Agent-Token"]
        status, agent_headers, _ = await env.call(headers=headers)
    assert [(a["method"], a["status"]) for a in answers] == [("GET", 403), ("POST", 403)]
    for answer in answers:
        assert orjson.loads(answer["body"])["error"] == "forbidden_origin", answer
        assert answer["authorization_sha256"] is None
    assert hits_from_the_page == []
    assert [outcome(r) for r in records] == [("GET", *REFUSED), ("POST", *REFUSED)]
    assert [r["url"] for r in records] == [target, target]
    assert status == 200 and agent_headers["X-Echo-Authorization-Sha256"] == BEARER_SHA256
