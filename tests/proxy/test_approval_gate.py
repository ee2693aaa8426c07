"""The proxy meets a tier gate: 403 approval_required with an id a human approves, then
the call goes through; grants listed, revoked within 1 s; a real broker subprocess, codes
from pyotp as a phone makes them."""

from __future__ import annotations

import asyncio
import json
import time

import orjson

from blindkey.proxy.request.authorise import Authoriser
from tests.approvals_helpers import acli, enrol
from tests.proxy.conftest import Env, eventually_status, set_secret_policy


async def _gated(env: Env, tier: str = "controlled") -> dict[str, str]:
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier=tier)
    headers = env.headers("/echo/repos?page=2", X_AS_Inject_Bearer="GITHUB_TOKEN")
    await eventually_status(env, 403, headers, code="approval_required")
    return headers


async def test_refusal_names_the_request_a_human_approves(env: Env) -> None:
    approver = await asyncio.to_thread(enrol)
    headers = await _gated(env)
    status, answer, body = await env.call("POST", headers=headers)
    error = orjson.loads(body)
    assert status == 403 and error["error"] == "approval_required"
    approval_id = error["approval_id"]
    assert approval_id.startswith("ap_")
    assert f"blindkey approve --request {approval_id}" in error["message"]
    assert "GITHUB_TOKEN" in error["message"] and "127.0.0.1" in error["message"]
    assert error["request_id"] == answer["X-Blindkey-Request-Id"]

    code, out, err = await acli("approvals", "list", "--json")
    assert code == 0, err
    (pending,) = [p for p in json.loads(out) if p["id"] == approval_id]
    assert pending["agent"] == "tester" and pending["secret"] == "GITHUB_TOKEN"
    assert (pending["method"], pending["host"], pending["path"]) == (
        "POST", "127.0.0.1", "/echo/repos"
    )  # fmt: skip
    assert pending["env"] == "development" and pending["age_s"] >= 0

    # The same call again is the same pending request, not a new one.
    _, _, again = await env.call("POST", headers=headers)
    assert orjson.loads(again)["approval_id"] == approval_id

    code, out, err = await acli("approve", "--request", approval_id, "--code", approver.code())
    assert code == 0, err
    status, _, body = await env.call("POST", headers=headers)
    assert status == 200, body
    code, out, _ = await acli("approvals", "list", "--json")
    assert json.loads(out) == []
    code, out, _ = await acli("grants", "list", "--json")
    (grant,) = json.loads(out)
    assert (grant["secret"], grant["env"], grant["agent"]) == (
        "GITHUB_TOKEN", "development", "tester"
    )  # fmt: skip
    assert grant["approvers"] == ["default"] and grant["needed"] == 1


async def test_revoke_stops_the_proxy_within_a_second(env: Env) -> None:
    approver = await asyncio.to_thread(enrol)
    headers = await _gated(env, "restricted")
    code, _, err = await acli("approve", "GITHUB_TOKEN", "--code", approver.code())
    assert code == 0, err
    status, _, _ = await env.call(headers=headers)
    assert status == 200
    start = time.monotonic()
    code, _, err = await acli("grants", "revoke", "GITHUB_TOKEN")
    assert code == 0, err
    # In force when the command returns: the broker waited for the proxy's acknowledgement.
    status, _, body = await env.call(headers=headers)
    assert status == 403 and orjson.loads(body)["error"] == "approval_required"
    assert time.monotonic() - start < 1.0


async def test_grant_expiry_is_pushed_within_a_second(env: Env) -> None:
    approver = await asyncio.to_thread(enrol)
    headers = await _gated(env)
    code, _, err = await acli("approve", "GITHUB_TOKEN", "--for", "1s", "--code", approver.code())
    assert code == 0, err
    status, _, _ = await env.call(headers=headers)
    assert status == 200
    # The grant ends 1 s after approval; the proxy must refuse within 1 s after that.
    elapsed = await eventually_status(env, 403, headers, timeout=2.5, code="approval_required")
    assert elapsed < 2.2


async def test_grant_for_one_agent_does_not_cover_another(env: Env) -> None:
    approver = await asyncio.to_thread(enrol)
    headers = await _gated(env)
    code, _, err = await acli(
        "approve", "GITHUB_TOKEN", "--agent", "someone-else", "--code", approver.code()
    )
    assert code == 0, err
    status, _, body = await env.call(headers=headers)
    assert status == 403 and orjson.loads(body)["error"] == "approval_required"


async def test_open_secrets_are_not_held_up(env: Env) -> None:
    authoriser: Authoriser = env.server.runtime.authoriser
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN", X_AS_Wait_Approval="5")
    status, _, _ = await env.call(headers=headers)
    assert status == 200 and authoriser.held == 0


async def test_two_approvers_needed_and_partial_grant_visible(env: Env) -> None:
    alice = await asyncio.to_thread(enrol, "alice")
    bob = await asyncio.to_thread(enrol, "bob", "--by", "alice", "--code", alice.code())
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="controlled", approvals=2)
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await eventually_status(env, 403, headers, code="approval_required")
    # alice has used both codes of this step: a recovery code stands in for a third.
    code, out, err = await acli(
        "approve", "GITHUB_TOKEN", "--approver", "alice", "--code", alice.recovery[0]
    )
    assert code == 0 and "1 more approver(s) needed (1 of 2)" in out, err
    status, _, body = await env.call(headers=headers)
    assert status == 403 and orjson.loads(body)["error"] == "approval_required"
    code, out, _ = await acli("grants", "list", "--json")
    (partial,) = json.loads(out)
    assert partial["approvers"] == ["alice"] and partial["needed"] == 2
    code, out, err = await acli(
        "approve", "GITHUB_TOKEN", "--approver", "bob", "--code", bob.code()
    )
    assert code == 0, err
    status, _, _ = await env.call(headers=headers)
    assert status == 200
    code, out, _ = await acli("grants", "list", "--json")
    assert json.loads(out)[0]["approvers"] == ["alice", "bob"]


async def test_no_http_surface_approves(env: Env) -> None:
    await asyncio.to_thread(enrol)
    headers = await _gated(env)
    _, _, body = await env.call(headers=headers)
    approval_id = orjson.loads(body)["approval_id"]
    for path in ("/approve", "/approvals", f"/approve?request={approval_id}", "/grants"):
        async with env.session.post(
            f"http://127.0.0.1:{env.server.port}{path}", headers={"X-AS-Agent-Token": env.token}
        ) as answer:
            assert answer.status == 400
            assert (await answer.json())["error"] == "bad_request"
    status, _, body = await env.call(headers=headers)
    assert status == 403 and orjson.loads(body)["approval_id"] == approval_id
