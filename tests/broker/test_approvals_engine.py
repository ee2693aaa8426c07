"""The broker's approvals on real files with an injected clock: drift, replay, lockout and
its end, recovery codes, multi-party grants, expiry, --for, consent and tier floors."""

from __future__ import annotations

import base64
import json
import stat
from typing import Any

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindkey.broker.approvals import totp
from blindkey.broker.approvals.codes import CodeNeeded, CodeRefused
from blindkey.broker.approvals.model import encode_state
from blindkey.broker.approvals.service import Approvals
from blindkey.broker.approvals.store import approvals_file
from blindkey.config.edit import edit_config, toml_table
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from tests.approvals_helpers import audit_events, seed_of

T0 = 1_800_000_000.0  # a step boundary: 1_800_000_000 / 30 is whole


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 1

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def approvals(home: Paths, clock: Clock) -> Approvals:
    return Approvals(home, clock)


def _settings(home: Paths, **policies: dict[str, Any]) -> Settings:
    def change(document: Any) -> None:
        for name, fields in policies.items():
            section = toml_table(document, "secrets", name)
            for key, value in fields.items():
                section[key] = value

    edit_config(home.config_file, home.lock_file, change)
    return load_settings(home.config_file)


def _enrol(approvals: Approvals, clock: Clock, name: str, **consent: Any) -> pyotp.TOTP:
    uri = approvals.enroll(name, consent.get("by"), consent.get("code"))["otpauth_uri"]
    app = pyotp.TOTP(seed_of(uri))
    approvals.confirm(name, app.at(clock.now))
    return app


def _events(home: Paths, event: str) -> list[dict[str, Any]]:
    return audit_events(home.audit_dir, event)


def test_seed_is_sealed_and_private(home: Paths, approvals: Approvals, clock: Clock) -> None:
    uri = approvals.enroll(None, None, None)["otpauth_uri"]
    seed = seed_of(uri)
    assert len(seed) == 32  # base32 of 160 bits
    raw = approvals_file(home).read_bytes()
    assert seed.encode() not in raw and b"approvers" not in raw
    assert stat.S_IMODE(approvals_file(home).stat().st_mode) == 0o600
    assert "otpauth://totp/blindkey:default" in uri and "issuer=blindkey" in uri
    # Pending until confirmed: it cannot approve yet, and the listing says so.
    assert approvals.approvers()[0]["status"] == "pending"
    with pytest.raises(BlindkeyError, match="no approver is enrolled"):
        approvals.approve(
            settings=_settings(home, S={"tier": "controlled"}),
            secret="S",
            env="development",
            code=pyotp.TOTP(seed).at(clock.now),
        )


def test_drift_of_one_step_either_way(home: Paths, approvals: Approvals, clock: Clock) -> None:
    app = _enrol(approvals, clock, "default")
    settings = _settings(home, S={"tier": "controlled"})
    clock.now += 300
    for offset in (-30, 30):
        approvals.approve(
            settings=settings, secret="S", env="development", code=app.at(clock.now + offset)
        )
    for offset in (-60, 60):
        with pytest.raises(CodeRefused) as refused:
            approvals.approve(
                settings=settings, secret="S", env="development", code=app.at(clock.now + offset)
            )
        assert refused.value.kind == "wrong" and refused.value.exit_code == 4


def test_a_code_is_accepted_once(home: Paths, approvals: Approvals, clock: Clock) -> None:
    app = _enrol(approvals, clock, "default")
    settings = _settings(home, S={"tier": "controlled"})
    clock.now += 60
    code = app.at(clock.now)
    approvals.approve(settings=settings, secret="S", env="development", code=code)
    # Seen in a process listing or the audit, it is worth nothing a second time.
    with pytest.raises(CodeRefused, match="already used") as refused:
        approvals.approve(settings=settings, secret="S", env="development", code=code)
    assert refused.value.kind == "reused"
    # Not even by another Approvals (another process) on the same files.
    with pytest.raises(CodeRefused):
        Approvals(home, clock).approve(settings=settings, secret="S", env="development", code=code)
    assert _events(home, "code_refused")[-1]["reason"] == "code_reused"
    # The confirming code's step was used too.
    clock.now = T0 + 1
    with pytest.raises(CodeRefused, match="already used"):
        approvals.approve(settings=settings, secret="S", env="development", code=app.at(clock.now))


def test_five_wrong_codes_lock_for_five_minutes(
    home: Paths, approvals: Approvals, clock: Clock
) -> None:
    app = _enrol(approvals, clock, "default")
    settings = _settings(home, S={"tier": "controlled"})
    clock.now += 60
    for _ in range(4):
        with pytest.raises(CodeRefused) as refused:
            approvals.approve(settings=settings, secret="S", env="development", code="000000")
        assert refused.value.kind == "wrong"
        clock.now += 10
    with pytest.raises(CodeRefused, match="locked out for 5 minutes") as refused:
        approvals.approve(settings=settings, secret="S", env="development", code="000000")
    assert refused.value.kind == "locked"
    assert _events(home, "locked_out")[-1]["approver"] == "default"
    # During the lockout even the right code, and a recovery code, are refused.
    clock.now += 240
    with pytest.raises(CodeRefused) as refused:
        approvals.approve(settings=settings, secret="S", env="development", code=app.at(clock.now))
    assert refused.value.kind == "locked"
    assert approvals.approvers()[0]["status"] == "locked"
    # It ends on time, by itself.
    clock.now += 61
    approvals.approve(settings=settings, secret="S", env="development", code=app.at(clock.now))
    assert approvals.in_force("S", "development", "any-agent")


def test_wrong_codes_spread_over_more_than_five_minutes_do_not_lock(
    home: Paths, approvals: Approvals, clock: Clock
) -> None:
    app = _enrol(approvals, clock, "default")
    settings = _settings(home, S={"tier": "controlled"})
    for _ in range(8):
        clock.now += 80  # never 5 within 300 s
        with pytest.raises(CodeRefused) as refused:
            approvals.approve(settings=settings, secret="S", env="development", code="000000")
        assert refused.value.kind == "wrong"
    approvals.approve(settings=settings, secret="S", env="development", code=app.at(clock.now))


def test_recovery_codes_work_once_each(home: Paths, approvals: Approvals, clock: Clock) -> None:
    uri = approvals.enroll(None, None, None)["otpauth_uri"]
    codes = approvals.confirm(None, pyotp.TOTP(seed_of(uri)).at(clock.now))["recovery_codes"]
    assert len(codes) == 10 == len(set(codes))
    settings = _settings(home, S={"tier": "restricted"})
    approvals.approve(settings=settings, secret="S", env="development", code=codes[0].upper())
    with pytest.raises(CodeRefused) as refused:
        approvals.approve(settings=settings, secret="S", env="development", code=codes[0])
    # Said as it is, not "wrong code".
    assert refused.value.kind == "reused" and refused.value.code == "code_reused"
    assert "recovery code already used" in str(refused.value)
    with pytest.raises(CodeRefused) as refused:
        approvals.approve(settings=settings, secret="S", env="development", code="abcd-efgh-jkmn")
    assert refused.value.kind == "wrong"
    assert approvals.approvers()[0]["recovery_codes_left"] == 9
    raw = approvals_file(home).read_bytes() + json.dumps(encode_state(approvals.state)).encode()
    assert all(code.encode() not in raw for code in codes)


def test_multi_party_needs_distinct_approvers(
    home: Paths, approvals: Approvals, clock: Clock
) -> None:
    alice = _enrol(approvals, clock, "alice")
    # Every later enrolment needs an existing approver's code.
    with pytest.raises(CodeNeeded):
        approvals.enroll("bob", "alice", None)
    with pytest.raises(CodeRefused):
        approvals.enroll("bob", "alice", "123456")
    clock.now += 30
    bob = _enrol(approvals, clock, "bob", by="alice", code=alice.at(clock.now))
    settings = _settings(home, S={"tier": "controlled", "approvals": 2})
    clock.now += 30
    partial = approvals.approve(
        settings=settings, secret="S", env="development", approver="alice", code=alice.at(clock.now)
    )
    assert partial["approvers"] == ["alice"] and partial["needed"] == 2
    assert not approvals.in_force("S", "development", "agent")
    # Visible while partial.
    assert approvals.grants()[0]["approvers"] == ["alice"]
    clock.now += 30
    with pytest.raises(BlindkeyError, match="already approved"):
        approvals.approve(
            settings=settings,
            secret="S",
            env="development",
            approver="alice",
            code=alice.at(clock.now),
        )
    approvals.approve(
        settings=settings, secret="S", env="development", approver="bob", code=bob.at(clock.now)
    )
    assert approvals.in_force("S", "development", "agent")
    assert approvals.grants()[0]["approvers"] == ["alice", "bob"]


def test_grants_expire_on_time_and_for_only_shortens(
    home: Paths, approvals: Approvals, clock: Clock
) -> None:
    app = _enrol(approvals, clock, "default")
    settings = _settings(home, C={"tier": "controlled"}, R={"tier": "restricted"})
    clock.now += 30
    with pytest.raises(BlindkeyError, match="not lengthen it past 15m"):
        approvals.approve(
            settings=settings,
            secret="R",
            env="development",
            duration=16 * 60,
            code=app.at(clock.now),
        )
    approvals.approve(settings=settings, secret="R", env="development", code=app.at(clock.now))
    approvals.approve(
        settings=settings,
        secret="C",
        env="development",
        agent="bot",
        duration=600,
        code=app.at(clock.now + 30),
    )
    assert approvals.in_force("C", "development", "bot")
    assert not approvals.in_force("C", "development", "other")
    assert not approvals.in_force("C", "production", "bot")
    clock.now += 599
    assert not approvals.expire()
    clock.now += 2
    assert approvals.expire()
    assert not approvals.in_force("C", "development", "bot")
    assert approvals.in_force("R", "development", "bot")
    clock.now += 300
    assert approvals.expire()
    assert approvals.grants() == []
    assert {e["secret"] for e in _events(home, "grant_expired")} == {"C", "R"}


def test_lowering_a_tier_needs_a_code_and_a_hand_edit_does_not_lower_it(
    home: Paths, approvals: Approvals, clock: Clock
) -> None:
    settings = _settings(home, S={"tier": "restricted"})
    approvals.follow(settings)
    app = _enrol(approvals, clock, "default")
    # config.toml edited by hand to open: the broker keeps serving restricted.
    lowered = _settings(home, S={"tier": "open"})
    approvals.follow(lowered)
    assert approvals.effective("S", lowered.policy("S"))[0] == "restricted"
    with pytest.raises(CodeNeeded):
        approvals.set_policy(lowered, "S", "open", None, None, None)
    with pytest.raises(CodeRefused):
        approvals.set_policy(lowered, "S", "open", None, None, "999999")
    # Raising needs no code; deleting a gated secret does.
    approvals.set_policy(lowered, "S", None, 2, None, None)
    assert approvals.effective("S", lowered.policy("S")) == ("restricted", 2)
    with pytest.raises(CodeNeeded):
        approvals.forget_secret(lowered, "S", "development", True, None, None)
    clock.now += 30
    approvals.set_policy(lowered, "S", "open", 1, None, app.at(clock.now))
    assert approvals.effective("S", lowered.policy("S")) == ("open", 1)


def test_removing_an_approver_needs_a_code(home: Paths, approvals: Approvals, clock: Clock) -> None:
    app = _enrol(approvals, clock, "default")
    with pytest.raises(CodeNeeded):
        approvals.remove("default", None, None)
    clock.now += 30
    approvals.remove("default", None, app.at(clock.now))
    assert approvals.approvers() == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda a, s: a.approve(settings=s, secret="bad name", env="development", code="1"),
            "invalid",
        ),
        (
            lambda a, s: a.approve(settings=s, secret="S", env="nowhere", code="1"),
            "unknown environment",
        ),
        (
            lambda a, s: a.approve(
                settings=s, secret="S", env="development", agent="b@d", code="1"
            ),
            "invalid agent",
        ),
        (
            lambda a, s: a.approve(settings=s, secret="OPEN", env="development", code="1"),
            "needs no grant",
        ),
        (
            lambda a, s: a.approve(
                settings=s, secret="S", env="development", duration=-1.0, code="1"
            ),
            "--for",
        ),
        (lambda a, s: a.enroll("no/slash", None, None), "invalid approver name"),
        (lambda a, s: a.revoke("S", None, None, False), "no grant matches"),
        (lambda a, s: a.deny("ap_nothing"), "no pending request"),
    ],
)
def test_bad_input_changes_nothing(
    home: Paths, approvals: Approvals, clock: Clock, call: Any, message: str
) -> None:
    _enrol(approvals, clock, "default")
    settings = _settings(home, S={"tier": "controlled"})
    before = approvals_file(home).read_bytes()
    with pytest.raises(BlindkeyError, match=message):
        call(approvals, settings)
    assert approvals_file(home).read_bytes() == before


def test_renewing_a_two_party_grant_keeps_the_old_one_until_complete(
    home: Paths, approvals: Approvals, clock: Clock
) -> None:
    alice = _enrol(approvals, clock, "alice")
    clock.now += 30
    bob = _enrol(approvals, clock, "bob", by="alice", code=alice.at(clock.now))
    settings = _settings(home, S={"tier": "controlled", "approvals": 2})
    clock.now += 60
    approvals.approve(
        settings=settings, secret="S", env="development", approver="alice", code=alice.at(clock.now)
    )
    approvals.approve(
        settings=settings, secret="S", env="development", approver="bob", code=bob.at(clock.now)
    )
    clock.now += 3600
    code = alice.at(clock.now)
    renewal = approvals.approve(
        settings=settings, secret="S", env="development", approver="alice", code=code
    )
    assert renewal["approvers"] == ["alice"]
    assert approvals.in_force("S", "development", "agent")  # the old grant still counts
    assert len(approvals.grants()) == 2
    # Approving twice is refused, and the code it came with is spent.
    with pytest.raises(BlindkeyError, match="already approved"):
        approvals.approve(
            settings=settings,
            secret="S",
            env="development",
            approver="alice",
            code=alice.at(clock.now + 30),
        )
    with pytest.raises(CodeRefused, match="already used"):
        approvals.approve(
            settings=settings,
            secret="S",
            env="development",
            approver="alice",
            code=alice.at(clock.now + 30),
        )
    approvals.approve(
        settings=settings, secret="S", env="development", approver="bob", code=bob.at(clock.now)
    )
    (grant,) = approvals.grants()
    assert grant["approvers"] == ["alice", "bob"]


@given(st.binary(min_size=20, max_size=20), st.integers(3, 8_000_000_000), st.integers(-3, 3))
def test_a_code_matches_within_one_step_of_drift(seed: bytes, step: int, offset: int) -> None:
    code = totp.code_at(seed, step + offset)
    now = step * 30 + 15.0
    found = totp.matching_step(seed, code, now)
    if abs(offset) <= 1:
        assert found is not None and totp.code_at(seed, found) == code
    else:
        # A 6-digit code may collide with a neighbour's by chance (1 in 10^6 per step).
        assert found is None or totp.code_at(seed, found) == code
    assert totp.code_at(seed, step) == pyotp.TOTP(base64.b32encode(seed).decode()).at(step * 30)
