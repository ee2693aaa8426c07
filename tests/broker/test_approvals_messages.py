"""What the human's approvals commands say when something is off: a secret that does not
exist, a recovery code used before. The real CLI, in-process, on real files."""

from __future__ import annotations

from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.approvals_helpers import cli, enrol
from tests.proxy.conftest import set_secret_policy


def test_approving_a_secret_that_does_not_exist_says_so(home: Paths) -> None:
    FileVault(home).set("staging", "ONLY_STAGING", "value-1234567890")
    code, _, err = cli("approve", "GHOST", "--code", "123456")
    assert code == 1
    assert "no secret named GHOST in environment development" in err
    assert "is open" not in err
    code, _, err = cli("approve", "ONLY_STAGING", "--code", "123456")
    assert code == 1 and "in environment development" in err
    code, _, err = cli("approve", "GHOST", "--env", "staging", "--code", "123456")
    assert code == 1 and "no secret named GHOST in environment staging" in err


def test_a_used_recovery_code_is_said_to_be_used_not_wrong(home: Paths) -> None:
    FileVault(home).set("development", "GATED", "value-1234567890")
    approver = enrol()
    set_secret_policy(home, "GATED", tier="restricted")
    recovery = approver.recovery[0]
    code, _, err = cli("approve", "GATED", "--code", recovery)
    assert code == 0, err
    code, _, err = cli("approve", "GATED", "--code", recovery)
    assert code == 4
    assert "recovery code already used" in err and "wrong code" not in err
    code, _, err = cli("approve", "GATED", "--code", "zzzz-zzzz-zzzz")
    assert code == 4 and "wrong code" in err
