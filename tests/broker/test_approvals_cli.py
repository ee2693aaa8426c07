"""The approvals commands as a person types them, with no broker running (the CLI works
on the broker's files itself): exit 4 and one line per refusal kind, codes from --code,
stdin or a prompt, the QR code, --json listings, usage errors."""

from __future__ import annotations

import json

import pyotp

from blindkey.config.paths import Paths
from tests.approvals_helpers import audit_events, cli, enrol, seed_of


def test_enroll_prints_a_qr_code_and_the_uri(home: Paths) -> None:
    code, out, err = cli("totp", "enroll")
    assert code == 0, err
    uri = next(line for line in out.splitlines() if line.startswith("otpauth://totp/"))
    assert "█" in out or "▀" in out  # the QR code, drawn in the terminal
    assert "blindkey totp confirm --approver default" in out
    # The seed is shown once: listings never show it again.
    code, listed, _ = cli("totp", "list", "--json")
    assert json.loads(listed) == [
        {"approver": "default", "status": "pending", "locked_until": None,
         "recovery_codes_left": 0}
    ]  # fmt: skip
    assert seed_of(uri) not in listed


def test_refusals_exit_4_with_their_own_message(home: Paths) -> None:
    approver = enrol()
    assert cli("secrets", "set", "GH", "--tier", "controlled", stdin="ghp_value0123456789")[0] == 0
    code, _, err = cli("approve", "GH", "--code", "000000")
    assert code == 4 and err.startswith("blindkey: wrong code for default")
    good = approver.code()
    code, out, err = cli("approve", "GH", "--code", good)
    assert (
        code == 0
        and "GH in development is granted to every agent for any host GH may reach until" in out
    ), err
    code, _, err = cli("approve", "GH", "--code", good)
    assert code == 4 and "already used" in err
    for _ in range(4):
        assert cli("approve", "GH", "--code", "000001")[0] == 4
    code, _, err = cli("approve", "GH", "--code", "000002")
    assert code == 4 and "5 wrong codes within 5 minutes: default is locked out" in err
    code, _, err = cli("approve", "GH", "--code", pyotp.TOTP(approver.seed).now())
    assert code == 4 and "locked out" in err and "even a right code" in err
    # A recovery code is the way back in: the lockout of wrong 6-digit codes is not its.
    code, _, err = cli("approve", "GH", "--code", approver.recovery[0])
    assert code == 0, err
    reasons = [r["reason"] for r in audit_events(home.audit_dir, "code_refused")]
    assert reasons[:2] == ["code_wrong", "code_reused"] and reasons[-1] == "locked_out"
    assert len(audit_events(home.audit_dir, "locked_out")) == 1
    assert [(g["secret"], g["approver"], g["agent"]) for g in audit_events(
        home.audit_dir, "grant")] == [("GH", "default", "*")] * 2  # fmt: skip


def test_code_from_one_line_of_stdin(home: Paths) -> None:
    approver = enrol()
    cli("secrets", "set", "GH", "--tier", "restricted", stdin="ghp_value0123456789")
    code, out, err = cli("approve", "GH", "--for", "5m", stdin=approver.code() + "\n")
    assert code == 0, err
    code, out, _ = cli("grants", "list", "--json")
    (grant,) = json.loads(out)
    assert grant["needed"] == 1 and grant["approvers"] == ["default"]


def test_tier_lowering_and_deleting_need_a_code(home: Paths) -> None:
    approver = enrol()
    cli("secrets", "set", "GH", "--tier", "controlled", stdin="ghp_value0123456789")
    code, _, err = cli("secrets", "set", "GH", "--tier", "open", stdin="ghp_value0123456789")
    assert code == 1 and "a code of approver default is needed" in err
    code, _, err = cli(
        "secrets", "set", "GH", "--tier", "open", "--code", "000000", stdin="ghp_value0123456789"
    )
    assert code == 4 and "wrong code" in err
    code, out, _ = cli("secrets", "list", "--json")
    assert json.loads(out)[0]["tier"] == "controlled"  # nothing changed
    code, _, err = cli("secrets", "delete", "GH", stdin="")
    assert code == 1 and "needed to delete controlled secret GH" in err
    code, _, err = cli("secrets", "delete", "GH", "--code", approver.code())
    assert code == 0, err


def test_a_second_approver_needs_the_first_ones_code(home: Paths) -> None:
    first = enrol("alice")
    code, _, err = cli("totp", "enroll", "--approver", "mallory", "--json")
    assert code == 1 and "a code of approver alice is needed" in err
    code, _, err = cli("totp", "enroll", "--approver", "mallory", "--code", "123456")
    assert code == 4
    second = enrol("bob", "--by", "alice", "--code", first.code())
    code, out, _ = cli("totp", "list", "--json")
    assert [r["approver"] for r in json.loads(out)] == ["alice", "bob"]
    code, _, err = cli("totp", "remove", "alice", "--by", "bob", "--code", second.code())
    assert code == 0, err
    assert pyotp.TOTP(first.seed).now()  # the phone still makes codes; they count no more
    assert cli("secrets", "set", "GH", "--tier", "controlled", stdin="ghp_value0123456789")[0] == 0
    code, _, err = cli("approve", "GH", "--approver", "alice", "--code", "000000")
    assert code == 1 and "no active approver named alice" in err


def test_usage_errors(home: Paths) -> None:
    assert cli("approve")[0] == 2
    assert cli("approve", "GH", "--request", "ap_1")[0] == 2
    assert cli("approve", "GH", "--for", "soon", "--code", "1")[0] == 2
    assert cli("grants", "revoke")[0] == 2
    assert cli("grants", "revoke", "GH", "--all")[0] == 2
    code, _, err = cli("grants", "revoke", "GH")
    assert code == 1 and "no grant matches" in err
    code, _, err = cli("deny", "--request", "ap_0000")
    assert code == 1 and "no pending request" in err
