"""Issue 23 item 11: one agent floods the broker with pending approvals (a new path each
time) while another agent's call is held for a human. The flooding agent is refused past
its own share; the other agent's pending request stays listed and its held call keeps
waiting, then goes through when the human approves it. A real proxy and broker."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.approvals.pending import MAX_PENDING, MAX_PENDING_PER_AGENT, PendingRequests
from blindkey.config.errors import BlindkeyError
from tests.approvals_helpers import acli, enrol
from tests.proxy.conftest import Env, eventually_status, set_secret_policy

pytestmark = pytest.mark.timeout(120)


async def _listed(agent: str) -> list[str]:
    code, out, err = await acli("approvals", "list", "--json")
    assert code == 0, err
    return [p["id"] for p in json.loads(out) if p["agent"] == agent]


async def test_a_flood_of_one_agent_evicts_nobody_else(env: Env) -> None:
    human = await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="controlled")
    victim = AgentStore(env.paths.agents_file, env.paths.lock_file).add("victim")
    held_headers = {**env.headers("/echo/victim", X_AS_Inject_Bearer="GITHUB_TOKEN"),
                    "X-AS-Agent-Token": victim, "X-AS-Wait-Approval": "60"}  # fmt: skip
    await eventually_status(
        env, 403, {**held_headers, "X-AS-Wait-Approval": "1"}, timeout=5, code="approval_required"
    )
    (victims,) = await _listed("victim")
    held = asyncio.create_task(env.call(headers=held_headers), name="victim-held-call")

    refused = 0
    for n in range(MAX_PENDING):
        headers = env.headers(f"/echo/{n}", X_AS_Inject_Bearer="GITHUB_TOKEN")
        status, _, body = await env.call(headers=headers)
        error = orjson.loads(body)
        assert status == 403 and error["error"] == "approval_required"
        if "approval_id" not in error:
            assert "agent tester already has 50 calls waiting for a human" in error["message"]
            refused += 1
    assert await _listed("victim") == [victims] and not held.done()
    assert refused == MAX_PENDING - MAX_PENDING_PER_AGENT
    assert len(await _listed("tester")) == MAX_PENDING_PER_AGENT

    code, _, err = await acli("approve", "--request", victims, "--code", human.code())
    assert code == 0, err
    status, _, body = await asyncio.wait_for(held, 10)
    assert status == 200, body


def test_the_whole_cap_refuses_rather_than_evicts() -> None:
    told: list[tuple[str, str]] = []
    pending = PendingRequests(lambda: 1_800_000_000.0)
    pending.on_outcome = lambda request, outcome: told.append((request, outcome))
    agents = MAX_PENDING // MAX_PENDING_PER_AGENT
    for agent in range(agents):
        for n in range(MAX_PENDING_PER_AGENT):
            pending.add(f"a{agent}", "S", "development", "GET", ("https", "h", 443), f"/{n}")
    with pytest.raises(BlindkeyError, match="the most the broker keeps"):
        pending.add("newcomer", "S", "development", "GET", ("https", "h", 443), "/")
    assert told == [] and len(pending.listed()) == MAX_PENDING
