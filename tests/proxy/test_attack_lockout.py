"""Issue 23 item 16: a single-user agent (the blindkey CLI as the human's user) keeps the
approver locked out with wrong codes. The human's recovery code still gets through, and
junk that is not a 6-digit code does not count toward the lockout; where the sources of
codes differ (Unix users), one source's wrong codes lock out that source only."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pyotp
import pytest

from blindkey.broker.approvals.codes import CodeRefused
from blindkey.broker.approvals.core import uid_source
from blindkey.broker.approvals.service import Approvals
from blindkey.config.edit import edit_config, toml_table
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from tests.approvals_helpers import acli, enrol, seed_of
from tests.proxy.conftest import Env, set_secret_policy, status_after_reload


async def test_the_agent_cannot_lock_the_human_out(env: Env) -> None:
    human = await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    await status_after_reload(env, 403, headers, code="approval_required")
    _, _, body = await env.call(headers=headers)
    request = orjson.loads(body)["approval_id"]

    # Junk that is no 6-digit code (a guessed recovery code) does not count...
    for n in range(8):
        code, _, err = await acli("approve", "GITHUB_TOKEN", "--code", f"aaaa-bbbb-ccc{n}")
        assert code == 4 and "neither a 6-digit code nor" in err, err
    code, out, _ = await acli("totp", "list", "--json")
    assert orjson.loads(out)[0]["status"] == "active"
    # ... five wrong 6-digit codes do lock the approver (the agent and the human share a
    # Unix user here, so they share the lockout) ...
    for _ in range(5):
        code, _, err = await acli("approve", "GITHUB_TOKEN", "--code", "000000")
        assert code == 4
    assert "locked out for 5 minutes (a recovery code still works)" in err
    code, _, err = await acli("approve", "--request", request, "--code", human.code())
    assert code == 4 and "even a right code is refused" in err
    # ... but the human's recovery code is not locked out, and approves the request.
    code, out, err = await acli("approve", "--request", request, "--code", human.recovery[0])
    assert code == 0, err
    status, _, body = await env.call(headers=headers)
    assert status == 200, body


def _controlled(home: Paths) -> Settings:
    def change(document: Any) -> None:
        toml_table(document, "secrets", "S")["tier"] = "controlled"

    edit_config(home.config_file, home.lock_file, change)
    return load_settings(home.config_file)


def test_wrong_codes_lock_out_their_own_source_only(home: Paths) -> None:
    now = [1_800_000_001.0]
    approvals = Approvals(home, lambda: now[0])
    uri = approvals.enroll(None, None, None)["otpauth_uri"]
    app = pyotp.TOTP(seed_of(uri))
    approvals.confirm(None, app.at(now[0]))

    settings = _controlled(home)
    agent, human = uid_source(1001), uid_source(1000)
    now[0] += 60
    with approvals.acting_for(agent):
        for _ in range(5):
            with pytest.raises(CodeRefused):
                approvals.approve(settings=settings, secret="S", env="development", code="000000")
        with pytest.raises(CodeRefused, match="locked out"):
            approvals.approve(settings=settings, secret="S", env="development", code=app.at(now[0]))
    assert approvals.approvers()[0]["status"] == "locked"
    with approvals.acting_for(human):
        approvals.approve(
            settings=settings, secret="S", env="development", code=app.at(now[0] + 30)
        )
    assert approvals.in_force("S", "development", "any-agent")


def test_a_lockout_written_before_sources_holds_for_every_source(home: Paths) -> None:
    now = [1_800_000_001.0]
    approvals = Approvals(home, lambda: now[0])
    app = pyotp.TOTP(seed_of(approvals.enroll(None, None, None)["otpauth_uri"]))
    codes = approvals.confirm(None, app.at(now[0]))["recovery_codes"]
    stored = approvals.file.read_stored() or {}  # the file as the older version left it
    stored["approvers"]["default"].update(locked_until=now[0] + 200, wrong=[now[0]])
    approvals.file.write_stored(stored)
    now[0] += 60
    settings = _controlled(home)
    with approvals.acting_for(uid_source(4242)), pytest.raises(CodeRefused, match="locked"):
        approvals.approve(settings=settings, secret="S", env="development", code=app.at(now[0]))
    assert approvals.approvers()[0]["status"] == "locked"
    # A recovery code still works, as it does for a lockout of now.
    approvals.approve(settings=settings, secret="S", env="development", code=codes[0])
    assert approvals.in_force("S", "development", "any-agent")
