"""Code written for AgentSecrets, unchanged: its Python SDK's real interceptor (requests,
httpx sync and async) turns `AS_SECRET_<NAME>` placeholders into X-AS-* calls to
localhost:8765/proxy, which blindkey serves. The interceptor sends no agent token, so the
config it needs is `require_agent_token = false` (the caller is agent "anonymous");
the interceptor runs in a process of its own, since it patches requests and httpx."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import orjson
import pytest

from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.conftest import ROOT
from tests.proxy.conftest import OTHER, SECRET, Env, open_env, set_secret_policy
from tests.upstream import HITS

CLIENT = """
import asyncio, json, sys
import agentsecrets, httpx, requests

agentsecrets.install_interceptor()
target = sys.argv[1]
bearer = {"Authorization": "Bearer AS_SECRET_GITHUB_TOKEN"}
out = {}
r = requests.get(target + "/echo", headers={**bearer, "X-Stripe": "AS_SECRET_STRIPE_KEY"})
out["requests"] = [r.status_code, r.text]
with httpx.Client() as client:
    r = client.get(target + "/echo", headers=bearer)
    out["httpx"] = [r.status_code, r.text]

async def main():
    async with httpx.AsyncClient() as client:
        r = await client.post(target + "/echo", headers=bearer, json={"x": 1})
        return [r.status_code, r.text]

out["httpx_async"] = asyncio.run(main())
print(json.dumps(out))
"""


def anonymous(document: Any) -> None:
    toml_table(document, "proxy")["require_agent_token"] = False


async def run_client(env: Env) -> dict[str, list[Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, env.base,
        cwd=ROOT, env={**os.environ, "AGENTSECRETS_PORT": str(env.server.port)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err
    answers: dict[str, list[Any]] = orjson.loads(out)
    return answers


@pytest.mark.timeout(60)
async def test_the_interceptor_works_unchanged_with_anonymous_callers(home: Paths) -> None:
    async with open_env(home, anonymous) as env:
        answers = await run_client(env)
        for client, (status, text) in answers.items():
            assert status == 200, (client, text)
            echoed = orjson.loads(text)
            sent = dict(echoed["headers"])
            assert sent["Authorization"] == "Bearer [REDACTED:GITHUB_TOKEN]", client
            assert SECRET not in text and OTHER not in text
        assert dict(orjson.loads(answers["requests"][1])["headers"])["X-Stripe"] == (
            "[REDACTED:STRIPE_KEY]"
        )
        assert orjson.loads(answers["httpx_async"][1])["body"] == '{"x":1}'
        await env.server.audit.flush()
        lines = (home.audit_dir / "audit.jsonl").read_bytes().splitlines()
        records = [orjson.loads(line) for line in lines]
        calls = [r for r in records if r.get("secrets")]
        assert [(r["agent"], r["decision"]) for r in calls] == [("anonymous", "allowed")] * 3
        received = [headers.get("Authorization") for _, _, headers in env.upstream.app[HITS]]
        assert received == [f"Bearer {SECRET}"] * 3


async def test_a_secret_bound_to_named_agents_is_not_anonymous(home: Paths) -> None:
    """What require_agent_token = false gives up is who called: a secret bound to named
    agents stays out of anonymous reach."""
    set_secret_policy(home, "GITHUB_TOKEN", agents=["tester"])
    async with open_env(home, anonymous) as env:
        answers = await run_client(env)
        assert answers["httpx"][0] == 403
        assert orjson.loads(answers["httpx"][1])["error"] == "secret_denied"
        assert env.upstream.app[HITS] == []


async def test_with_tokens_required_the_interceptor_is_refused(home: Paths) -> None:
    async with open_env(home) as env:
        answers = await run_client(env)
        assert {status for status, _ in answers.values()} == {401}
        assert env.upstream.app[HITS] == []
