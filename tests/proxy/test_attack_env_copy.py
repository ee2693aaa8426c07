"""Issue 23 item 6, tried as a single-user agent would: a human granted a controlled secret
in development; the agent runs `environment copy production development` (no code) so that
grant would release the live production value through the proxy. Copying from production,
or into an environment with grants, needs an approver's code (exit 4 when refused)."""

from __future__ import annotations

import asyncio

from blindkey.broker.vault import FileVault
from tests.approvals_helpers import acli, enrol
from tests.proxy.conftest import (
    SECRET,
    Env,
    set_secret_policy,
    status_after_reload,
)

LIVE = "ghp_LIVEproductionValue0123456789abcdef"


async def test_copying_production_over_a_granted_environment_needs_a_code(env: Env) -> None:
    human = await asyncio.to_thread(enrol)
    FileVault(env.paths).set("production", "GITHUB_TOKEN", LIVE)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="controlled")
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await status_after_reload(env, 403, headers, code="approval_required")
    code, _, err = await acli("approve", "GITHUB_TOKEN", "--code", human.code())
    assert code == 0, err
    status, _, _ = await env.call(headers=headers)
    assert status == 200

    # The agent: no code, then a guessed one.
    code, _, err = await acli("environment", "copy", "production", "development")
    assert code == 1 and "code of approver default is needed to copy production" in err, err
    code, _, err = await acli("environment", "copy", "production", "development",
                              "--code", "000000")  # fmt: skip
    assert code == 4 and "wrong code" in err
    assert FileVault(env.paths).load()["development"]["GITHUB_TOKEN"] == SECRET
    # Not from another environment into one with grants either.
    FileVault(env.paths).set("staging", "GITHUB_TOKEN", "ghp_stagingValue0123456789abcdef")
    code, _, err = await acli("environment", "copy", "staging", "development")
    assert code == 1 and "grants in force there" in err, err
    assert FileVault(env.paths).load()["development"]["GITHUB_TOKEN"] == SECRET

    # The human, with a code (one of their recovery codes here), may.
    code, out, err = await acli("environment", "copy", "production", "development",
                                "--code", human.recovery[0])  # fmt: skip
    assert code == 0 and "copied 1 secrets from production to development" in out, err
    status, _, body = await env.call(headers=headers)
    assert status == 200 and LIVE.encode() not in body
    assert b"[REDACTED:GITHUB_TOKEN]" in body


async def test_copying_between_ungranted_environments_needs_no_code(env: Env) -> None:
    await asyncio.to_thread(enrol)
    FileVault(env.paths).set("staging", "GITHUB_TOKEN", "ghp_stagingValue0123456789abcdef")
    code, _, err = await acli("environment", "copy", "development", "staging")
    assert code == 0, err
