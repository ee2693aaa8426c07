"""What a gated call tells its agent and its audit: how many approvals a grant needs and
has, and how long a held call waited for its human (`waited_ms`). A real proxy with its
broker subprocess; codes from pyotp."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import orjson

from tests.approvals_helpers import acli, audit_events, enrol
from tests.proxy.conftest import Env, set_secret_policy, status_after_reload


async def _record(env: Env, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        for record in audit_events(env.paths.audit_dir, "request"):
            if record.get("request_id") == request_id:
                return record
        assert time.monotonic() < deadline, f"no audit record for {request_id}"
        await asyncio.sleep(0.02)


async def test_a_held_call_records_how_long_it_waited(env: Env) -> None:
    approver = await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await status_after_reload(env, 403, headers, code="approval_required")
    _, refused, _ = await env.call(headers=headers)
    held = asyncio.create_task(env.call(headers={**headers, "X-AS-Wait-Approval": "30"}))
    deadline = time.monotonic() + 5
    while True:
        code, out, err = await acli("approvals", "list", "--json")
        assert code == 0, err
        if json.loads(out):
            break
        assert time.monotonic() < deadline, "the held call was never listed"
        await asyncio.sleep(0.05)
    code, _, err = await acli("approve", "GITHUB_TOKEN", "--code", approver.code())
    assert code == 0, err
    status, answer, body = await asyncio.wait_for(held, 10)
    assert status == 200, body

    record = await _record(env, answer["X-Blindkey-Request-Id"])
    assert record["decision"] == "allowed"
    assert 0 < record["waited_ms"] <= record["duration_ms"]
    # A call refused at once was not held: nothing waited.
    assert "waited_ms" not in await _record(env, refused["X-Blindkey-Request-Id"])


async def test_approval_required_says_how_many_approvals_a_grant_needs_and_has(
    env: Env,
) -> None:
    alice = await asyncio.to_thread(enrol, "alice")
    await asyncio.to_thread(enrol, "bob", "--by", "alice", "--code", alice.code())
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted", approvals=2)
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await status_after_reload(env, 403, headers, code="approval_required")
    status, _, body = await env.call(headers=headers)
    message = orjson.loads(body)["message"]
    assert "a grant needs 2 approvals from distinct approvers and has 0" in message

    # Alice's codes of this step went on her enrolment and bob's: a recovery code.
    code, _, err = await acli(
        "approve", "GITHUB_TOKEN", "--approver", "alice", "--code", alice.recovery[0]
    )
    assert code == 0, err
    status, _, body = await env.call(headers=headers)
    assert status == 403
    assert "needs 2 approvals from distinct approvers and has 1" in orjson.loads(body)["message"]


async def test_the_broker_says_a_secret_to_approve_does_not_exist(env: Env) -> None:
    await asyncio.to_thread(enrol)
    code, _, err = await acli("approve", "GHOST", "--code", "123456")
    assert code == 1
    assert "no secret named GHOST in environment development" in err
    assert audit_events(env.paths.audit_dir, "code_refused") == []  # no code was spent
