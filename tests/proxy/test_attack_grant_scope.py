"""Issue 23 item 5, tried as an agent would against a real proxy and broker: a grant a
human approved for one listed request is used to send the value to another destination
the agent controls (another port here; both allowlisted, as after an `allowlist add`); and
a secret bound to a host goes to that host's http:// or another port. A grant from a
request covers its scheme, host and port only, `approvals list` says so, and a binding
means what an allowlist entry means."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.approvals_helpers import acli, enrol
from tests.conftest import ROOT
from tests.proxy.conftest import SECRET, Env, eventually_status, open_env, set_secret_policy
from tests.upstream import start_upstream


@pytest.fixture
async def two(home: Paths) -> AsyncIterator[tuple[Env, str]]:
    """The proxy, and a second allowlisted destination: the agent's own server."""
    other, port = await start_upstream()
    elsewhere = f"http://127.0.0.1:{port}"

    def allow(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].append(elsewhere)

    try:
        async with open_env(home, configure=allow) as env:
            yield env, elsewhere
    finally:
        await other.cleanup()


async def test_a_grant_from_a_request_covers_that_destination_only(
    two: tuple[Env, str],
) -> None:
    env, elsewhere = two
    human = await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="controlled")
    listed = env.headers("/echo/v1/refunds", X_AS_Inject_Bearer="GITHUB_TOKEN")
    await eventually_status(env, 403, listed, code="approval_required")
    _, _, body = await env.call(headers=listed)
    request = orjson.loads(body)["approval_id"]

    code, out, err = await acli("approvals", "list", "--json")
    assert code == 0, err
    (pending,) = json.loads(out)
    assert (pending["scheme"], pending["host"], pending["port"]) == (
        "http", "127.0.0.1", env.upstream_port
    )  # fmt: skip
    assert pending["covers"] == env.base
    code, out, _ = await acli("approvals", "list")
    assert env.base in out and "for that DESTINATION (scheme, host and port) only" in out

    code, out, err = await acli("approve", "--request", request, "--code", human.code())
    assert code == 0 and f"for {env.base} only" in out, err
    status, _, _ = await env.call(headers=listed)
    assert status == 200
    # The agent's own destination: the grant does not reach it.
    theirs = env.to(f"{elsewhere}/echo", X_AS_Inject_Bearer="GITHUB_TOKEN")
    status, _, body = await env.call(headers=theirs)
    assert status == 403 and orjson.loads(body)["error"] == "approval_required", body
    code, out, _ = await acli("grants", "list", "--json")
    assert [g["covers"] for g in json.loads(out)] == [env.base]

    # `approve SECRET` keeps its meaning (every host the secret may reach), and says so.
    code, out, err = await acli("approve", "GITHUB_TOKEN", "--code", human.recovery[0])
    assert code == 0 and "for any host GITHUB_TOKEN may reach" in out, err
    status, _, _ = await env.call(headers=theirs)
    assert status == 200


async def test_a_binding_names_scheme_and_port(two: tuple[Env, str]) -> None:
    env, elsewhere = two
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    # A bare host is https on port 443: not http://, not another port.
    set_secret_policy(env.paths, "GITHUB_TOKEN", hosts=["127.0.0.1"])
    await eventually_status(env, 403, headers, code="secret_denied")
    _, _, body = await env.call(headers=headers)
    message = orjson.loads(body)["message"]
    assert f"not bound to {env.base}" in message
    assert f"add 'http://127.0.0.1:{env.upstream_port}' to [secrets.GITHUB_TOKEN] hosts" in message

    def bind(document: Any) -> None:
        toml_table(document, "secrets", "GITHUB_TOKEN")["hosts"] = string_array([env.base])

    env.configure(bind)
    await eventually_status(env, 200, headers)
    other = env.to(f"{elsewhere}/echo", X_AS_Inject_Bearer="GITHUB_TOKEN")
    status, _, body = await env.call(headers=other)
    assert status == 403 and orjson.loads(body)["error"] == "secret_denied"


async def _exec(env: Env, name: str) -> dict[str, Any]:
    """`blindkey exec` as the agent runs it (OpenClaw's exec provider)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "exec", cwd=ROOT,
        env={**os.environ, "BLINDKEY_HOME": str(env.paths.config_dir),
             "BLINDKEY_AGENT_TOKEN": env.token},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    request = {"protocolVersion": 1, "provider": "blindkey", "ids": [name]}
    out, _ = await process.communicate(orjson.dumps(request))
    answer: dict[str, Any] = orjson.loads(out)
    return answer


async def test_a_grant_from_a_request_releases_nothing_to_exec(env: Env) -> None:
    # Released to exec before an approver exists: afterwards that widening needs a code.
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="controlled", release=["proxy", "exec"])
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    # In force before the approver exists (the broker takes the file in on its own).
    await eventually_status(env, 403, headers, code="approval_required", timeout=10)
    human = await asyncio.to_thread(enrol)
    _, _, body = await env.call(headers=headers)
    request = orjson.loads(body)["approval_id"]
    code, _, err = await acli("approve", "--request", request, "--code", human.code())
    assert code == 0, err
    status, _, _ = await env.call(headers=headers)
    assert status == 200
    # The value out of the proxy altogether goes to any host: not what was approved.
    answer = await _exec(env, "GITHUB_TOKEN")
    assert answer["values"] == {}
    assert answer["errors"]["GITHUB_TOKEN"]["message"].startswith("approval_required:")
    code, _, err = await acli("approve", "GITHUB_TOKEN", "--code", human.recovery[0])
    assert code == 0, err
    assert (await _exec(env, "GITHUB_TOKEN"))["values"] == {"GITHUB_TOKEN": SECRET}
