"""A call held for a human (X-AS-Wait-Approval) outlives a broker killed with SIGKILL: an
approval made while the broker is down or just back releases it, and the restarted broker
lists it under the id the human was given. A real proxy with its supervised broker
subprocess; codes from pyotp."""

from __future__ import annotations

import asyncio
import json
import time

from tests.approvals_helpers import Approver, acli, enrol
from tests.proxy.broker_kill import killed, restarted
from tests.proxy.conftest import Env, set_secret_policy, status_after_reload

WAIT = "20"


async def _gated(env: Env) -> tuple[Approver, dict[str, str]]:
    approver = await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await status_after_reload(env, 403, headers, code="approval_required")
    headers["X-AS-Wait-Approval"] = WAIT
    return approver, headers


async def _listed(timeout: float = 10) -> list[str]:
    """The ids `approvals list` shows once there is one (from whichever broker runs)."""
    deadline = time.monotonic() + timeout
    while True:
        code, out, _ = await acli("approvals", "list", "--json")
        ids = [p["id"] for p in json.loads(out)] if code == 0 else []
        if ids:
            return ids
        assert time.monotonic() < deadline, "no held call was listed"
        await asyncio.sleep(0.05)


async def test_an_approval_while_the_broker_is_down_releases_the_held_call(env: Env) -> None:
    approver, headers = await _gated(env)
    held = asyncio.create_task(env.call(headers=headers), name="held-call")
    await _listed()
    await killed(env.server)
    # At once: the CLI finds no broker (or the new one starting) and writes the grant.
    code, _, err = await acli("approve", "GITHUB_TOKEN", "--code", approver.code())
    assert code == 0, err
    started = time.monotonic()
    status, _, body = await asyncio.wait_for(held, 15)
    assert status == 200, body
    # Within a few seconds of the approval, not at the end of its wait.
    assert time.monotonic() - started < int(WAIT) / 2


async def test_the_restarted_broker_knows_the_held_call_by_its_id(env: Env) -> None:
    approver, headers = await _gated(env)
    held = asyncio.create_task(env.call(headers=headers), name="held-call")
    (approval_id,) = await _listed()
    old = await killed(env.server)
    await restarted(env.server, old)
    assert await _listed() == [approval_id]
    code, _, err = await acli("approve", "--request", approval_id, "--code", approver.code())
    assert code == 0, err
    status, _, body = await asyncio.wait_for(held, 5)
    assert status == 200, body
