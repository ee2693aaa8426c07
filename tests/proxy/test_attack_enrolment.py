"""Issue 23 item 4, tried as a single-user agent would (it runs the blindkey CLI as the
human's user) against a running proxy and its real broker: it cannot slip an approver of
its own in between the human's `totp enroll` and `totp confirm`, nor take the pending seed
by enrolling the same name again, nor clear the way with `totp remove`; and a gated tier set
while nobody can approve it is refused unless --yes, which warns."""

from __future__ import annotations

import json

import orjson
import pyotp
import pytest

from blindkey.broker.approvals.approvers import ENROL_TTL
from blindkey.broker.approvals.codes import CodeRefused
from blindkey.broker.approvals.service import Approvals
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths
from tests.approvals_helpers import Approver, acli, seed_of
from tests.proxy.conftest import Env

VALUE = "ghp_enrolmentAttackValue0123456789"


async def test_no_approver_slips_in_between_enroll_and_confirm(env: Env) -> None:
    code, out, err = await acli("totp", "enroll", "--json")  # the human
    assert code == 0, err
    human = Approver("default", seed_of(json.loads(out)["otpauth_uri"]))

    # The agent: an approver of its own (no code asked while none is active), the same
    # name again (a fresh seed it would see), or the human's enrolment removed first.
    for attempt in (
        ("totp", "enroll", "--approver", "evil", "--json"),
        ("totp", "enroll", "--approver", "default", "--json"),
        ("totp", "remove", "default"),
    ):
        code, out, err = await acli(*attempt)
        assert code == 1 and "waits for `blindkey totp confirm --approver default`" in err, err
        assert "otpauth://" not in out
    code, out, _ = await acli("totp", "list", "--json")
    assert [(r["approver"], r["status"]) for r in json.loads(out)] == [("default", "pending")]

    # The human's phone still confirms the seed it scanned; then every later enrolment
    # needs that approver's code.
    code, _, err = await acli("totp", "confirm", "--code", human.code())
    assert code == 0, err
    code, _, err = await acli("totp", "enroll", "--approver", "evil", "--json")
    assert code == 1 and "a code of approver default is needed" in err
    code, out, _ = await acli("totp", "list", "--json")
    assert [(r["approver"], r["status"]) for r in json.loads(out)] == [("default", "active")]

    # So the agent has no code to approve its own request with.
    code, _, err = await acli("secrets", "set", "GITHUB_TOKEN", "--tier", "controlled",
                              stdin=VALUE)  # fmt: skip
    assert code == 0, err
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    status, _, body = await env.call(headers=headers)
    assert status == 403
    request = orjson.loads(body)["approval_id"]
    code, _, err = await acli("approve", "--request", request, "--code", "000000")
    assert code == 4


async def test_a_gated_tier_nobody_can_approve_needs_yes(env: Env) -> None:
    code, out, err = await acli("secrets", "set", "GITHUB_TOKEN", "--tier", "restricted",
                                stdin=VALUE)  # fmt: skip
    assert code == 1 and "no approver is active" in err and "--yes" in err
    code, out, _ = await acli("secrets", "list", "--json")
    assert {r["name"]: r["tier"] for r in json.loads(out)}["GITHUB_TOKEN"] == "open"

    code, out, err = await acli("secrets", "set", "GITHUB_TOKEN", "--tier", "restricted",
                                "--yes", stdin=VALUE)  # fmt: skip
    assert code == 0, err
    assert "warning: no approver is active: nobody can approve GITHUB_TOKEN yet" in err
    code, out, _ = await acli("secrets", "list", "--json")
    assert {r["name"]: r["tier"] for r in json.loads(out)}["GITHUB_TOKEN"] == "restricted"


@pytest.fixture
def clock() -> list[float]:
    return [1_800_000_001.0]


def test_an_unconfirmed_enrolment_lapses(home: Paths, clock: list[float]) -> None:
    approvals = Approvals(home, lambda: clock[0])
    lost = approvals.enroll(None, None, None)  # the QR code scrolled away, never confirmed
    with pytest.raises(BlindkeyError, match="waits for"):
        approvals.enroll("other", None, None)
    clock[0] += ENROL_TTL
    assert approvals.approvers() == []
    fresh = approvals.enroll(None, None, None)
    app = pyotp.TOTP(seed_of(fresh["otpauth_uri"]))
    with pytest.raises(CodeRefused, match="wrong code"):
        approvals.confirm(None, pyotp.TOTP(seed_of(lost["otpauth_uri"])).at(clock[0]))
    approvals.confirm(None, app.at(clock[0] + 30))
    assert [r["status"] for r in approvals.approvers()] == ["active"]
