"""A budget end to end: the openai SDK through a route spends, the real broker counts what
each answer's usage cost, a human's grant lets the agent go on above approve_above_usd,
and past the daily cap the SDK gets 429 budget_exceeded with Retry-After."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import orjson
import pytest

from blindkey.broker.link import ask
from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.approvals_helpers import Approver, acli, seed_of
from tests.proxy.conftest import Env
from tests.proxy.test_usage import GPT, clients, cost, llm_env

CALL = cost(GPT)  # what one answer of the fake API costs at gpt-4o's price


def api_of(env: Env) -> str:
    """The fake API's base URL, as the openai route names it."""
    return str(env.server.runtime.settings.routes["openai"].to)


def budget(document: Any) -> None:
    toml_table(document, "agents", "tester")["budget"] = {
        "daily_usd": 4 * CALL - 1e-6,
        "approve_above_usd": 1.5 * CALL,
    }


async def spent(env: Env) -> dict[str, Any]:
    reply = await asyncio.to_thread(ask, env.paths, "budget")
    (row,) = [r for r in reply["agents"] if r["agent"] == "tester"]
    assert isinstance(row, dict)
    return row


async def counted(env: Env, calls: int) -> dict[str, Any]:
    """The broker's totals once it has counted `calls` answers (it hears of each after
    the answer went out)."""
    for _ in range(500):
        row = await spent(env)
        if row["calls"] >= calls:
            return row
        await asyncio.sleep(0.01)
    raise AssertionError(f"the broker counted {row['calls']} calls, not {calls}")


async def enrol() -> Approver:
    code, out, err = await acli("totp", "enroll", "--json")
    assert code == 0, err
    approver = Approver("default", seed_of(json.loads(out)["otpauth_uri"]))
    code, _, err = await acli("totp", "confirm", "--code", approver.code())
    assert code == 0, err
    return approver


@pytest.mark.timeout(120)
async def test_a_budget_asks_a_human_then_refuses_past_its_cap(home: Paths) -> None:
    async with llm_env(home, budget) as env:
        gpt, _ = clients(env)
        asked: Any = [{"role": "user", "content": "hi"}]

        async def chat() -> None:
            await gpt.chat.completions.create(model="gpt-4o", messages=asked)

        try:
            await chat()
            await chat()
            row = await counted(env, 2)
            assert row["day_usd"] == pytest.approx(2 * CALL)
            assert row["state"] == "needs_approval"
            with pytest.raises(openai.PermissionDeniedError) as refused:
                await chat()
            assert refused.value.code == "approval_required"
            body = refused.value.body
            assert isinstance(body, dict)
            approval = body.get("approval_id") or body["error"]["approval_id"]
            # A pending request like any tier's: approved for this host, by its id.
            approver = await enrol()
            code, _, err = await acli("approve", "--request", approval, "--code", approver.code())
            assert code == 0, err
            await chat()
            await chat()
            row = await counted(env, 4)
            assert row["state"] == "exceeded"
            with pytest.raises(openai.RateLimitError) as limited:
                await chat()
            error = limited.value
            assert error.status_code == 429
            assert error.code == "budget_exceeded"
            assert 1 <= int(error.response.headers["Retry-After"]) <= 86400
        finally:
            await gpt.close()
        # `policy test` asks the running broker (its explain op): the same decision.
        url = api_of(env) + "/v1/chat/completions"
        asked_of = ("--agent", "tester", "--method", "POST", "--url", url)
        code, out, err = await acli("policy", "test", *asked_of, "--secret", "OPENAI_API_KEY",
                                    "--json")  # fmt: skip
        assert code == 0, err
        tested = json.loads(out)
        assert (tested["error"], tested["rule"]) == (
            "budget_exceeded", "agents.tester.budget.daily_usd",
        )  # fmt: skip
        code, out, err = await acli("budget", "status", "--json")
        assert code == 0, err
        (shown,) = [r for r in json.loads(out) if r["agent"] == "tester"]
        assert shown["calls"] == 4 and shown["day_usd"] == pytest.approx(4 * CALL)
        await env.server.audit.flush()
        lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
        reasons = [r.get("reason") for r in map(orjson.loads, lines) if r["event"] == "request"]
        assert reasons == [None, None, "approval_required", None, None, "budget_exceeded"]
