"""The broker's passkey checks on their own, through the approvals op table as the broker
runs it (run_action), with answers no browser sends: what a taken-over `blindkey ui`
could relay. Without user verification, for another origin, for a challenge that named
other fields, from a locked-out approver, or with no code at enrolment: refused."""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from typing import Any

import pytest

from blindkey.broker.approvals.codes import CodeNeeded, CodeRefused
from blindkey.broker.approvals.ops import run_action
from blindkey.broker.approvals.passkeys import binding, passkeys_file
from blindkey.broker.approvals.pending import Pending
from blindkey.broker.approvals.service import Approvals
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from tests.approvals_helpers import Approver, audit_events, cli, enrol
from tests.proxy.conftest import set_secret_policy
from tests.ui.soft_authenticator import SoftAuthenticator

ORIGIN = "http://localhost:8766"


class Broker:
    """The approvals of one broker process, asked as the op table asks them."""

    def __init__(self, home: Paths) -> None:
        set_secret_policy(home, "GH", tier="restricted")
        self.settings = load_settings(home.config_file)
        self.skew = 0.0  # time a test moves on at once
        self.approvals = Approvals(home, lambda: time.time() + self.skew)

    def do(self, action: str, **params: Any) -> Any:
        return run_action(self.approvals, self.settings, action, params)

    def hold(self, agent: str = "tester", method: str = "GET") -> str:
        target = ("https", "api.github.com", 443)
        return self.approvals.pending.add(agent, "GH", "development", method, target, "/").id

    def enrol_key(self, approver: Approver, key: SoftAuthenticator) -> None:
        begun = self.do("passkey_register_begin", approver=approver.name, code=approver.code())
        self.do("passkey_register_finish", approver=approver.name, origin=ORIGIN,
                credential=key.register(begun["options"], ORIGIN))  # fmt: skip

    def approve(self, request: str, key: SoftAuthenticator, **how: Any) -> Any:
        options = self.do("passkey_approve_begin", request=request)["options"]
        origin = how.pop("origin", ORIGIN)
        credential = key.assertion(options, how.pop("signed_for", origin), **how)
        return self.do("passkey_approve_finish", request=request, credential=credential,
                       origin=origin)  # fmt: skip


@pytest.fixture
def broker(home: Paths) -> Broker:
    return Broker(home)


def test_user_verification_is_required(broker: Broker, home: Paths) -> None:
    approver, key = enrol(), SoftAuthenticator()
    # A recovery code: a test gets two TOTP codes per 30 s step, and enrol() spent one.
    begun = broker.do("passkey_register_begin", approver="default", code=approver.recovery[0])
    unverified = key.register(begun["options"], ORIGIN, verified=False)
    with pytest.raises(BlindkeyError, match="not enrolled"):
        broker.do("passkey_register_finish", approver="default", credential=unverified,
                  origin=ORIGIN)  # fmt: skip
    broker.enrol_key(approver, key)
    request = broker.hold()
    with pytest.raises(CodeRefused, match="refused") as refused:
        broker.approve(request, key, verified=False)
    assert refused.value.code == "code_wrong"
    assert broker.do("grants") == []
    grant = broker.approve(broker.hold(method="POST"), key)
    assert grant["approvers"] == ["default"]
    (record,) = audit_events(home.audit_dir, "code_refused")
    assert record["reason"] == "passkey_refused"


def test_the_origin_is_the_pages(broker: Broker) -> None:
    approver, key = enrol(), SoftAuthenticator()
    broker.enrol_key(approver, key)
    # Signed for another site's page, relayed as if it were ours.
    with pytest.raises(CodeRefused):
        broker.approve(broker.hold(), key, signed_for="http://evil.test")
    # Ours, on another port: another origin too.
    with pytest.raises(CodeRefused):
        broker.approve(broker.hold("other"), key, signed_for="http://localhost:9999")
    # Relayed as coming from anything but http://localhost:PORT: refused outright.
    with pytest.raises(BlindkeyError, match="from http://localhost:PORT"):
        broker.approve(broker.hold("third"), key, origin="http://evil.test")
    assert broker.do("grants") == []


def test_the_challenge_names_each_field_of_the_request() -> None:
    pending = Pending("ap_0123456789abcdef", "tester", "GH", "development", "GET", "https",
                      "api.github.com", 443, "/user", 0.0)  # fmt: skip
    nonce = os.urandom(32)
    assert binding(pending, nonce) == binding(pending, nonce)
    assert binding(pending, nonce) != binding(pending, os.urandom(32))
    changes: dict[str, Any] = {"id": "ap_fedcba9876543210", "agent": "other", "secret": "STRIPE",
               "env": "production", "method": "POST", "scheme": "http", "host": "evil.test",
               "port": 8443, "path": "/admin"}  # fmt: skip
    for field, value in changes.items():
        changed = dataclasses.replace(pending, **{field: value})
        assert binding(changed, nonce) != binding(pending, nonce), field
    # The time it was made is not what is approved: it is left out.
    assert binding(dataclasses.replace(pending, created=5.0), nonce) == binding(pending, nonce)


def test_a_locked_out_approver_is_refused_a_passkey_approval(broker: Broker) -> None:
    approver, key = enrol(), SoftAuthenticator()
    broker.enrol_key(approver, key)
    request = broker.hold()
    for _ in range(5):
        with pytest.raises(CodeRefused):
            broker.do("approve_request", request=request, code="000000")
    with pytest.raises(CodeRefused, match="locked out") as refused:
        broker.approve(request, key)
    assert refused.value.code == "locked_out"
    assert broker.do("grants") == []


def test_enrolment_needs_a_code_of_that_approver(broker: Broker) -> None:
    enrol()
    with pytest.raises(CodeNeeded):
        broker.do("passkey_register_begin", approver="default")
    with pytest.raises(CodeRefused):
        broker.do("passkey_register_begin", approver="default", code="000000")
    # No challenge was offered: an attestation for a made-up one enrols nothing.
    made_up = SoftAuthenticator().register({"challenge": "AAAA"}, ORIGIN)
    with pytest.raises(CodeRefused, match="no open passkey challenge"):
        broker.do("passkey_register_finish", approver="default", credential=made_up,
                  origin=ORIGIN)  # fmt: skip
    assert broker.do("passkeys") == []
    with pytest.raises(BlindkeyError, match="no approver has a passkey"):
        broker.do("passkey_approve_begin", request=broker.hold())


def test_the_passkeys_file_is_the_brokers_and_sealed(broker: Broker, home: Paths) -> None:
    approver, key = enrol(), SoftAuthenticator()
    broker.enrol_key(approver, key)
    path = passkeys_file(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (listed,) = broker.do("passkeys")
    assert listed["approver"] == "default"
    assert listed["id"].encode() not in path.read_bytes()  # sealed, not merely stored
    sealed = bytearray(path.read_bytes())
    sealed[-1] ^= 1
    path.write_bytes(bytes(sealed))
    with pytest.raises(BlindkeyError, match="does not decrypt"):
        broker.do("passkey_approve_begin", request=broker.hold())


def test_a_challenge_lapses(broker: Broker) -> None:
    approver, key = enrol(), SoftAuthenticator()
    broker.enrol_key(approver, key)
    request = broker.hold()
    options = broker.do("passkey_approve_begin", request=request)["options"]
    broker.skew += 121
    with pytest.raises(CodeRefused, match="lapses after 120s"):
        broker.do("passkey_approve_finish", request=request, origin=ORIGIN,
                  credential=key.assertion(options, ORIGIN))  # fmt: skip
    assert broker.do("grants") == []


def test_an_approver_enrolled_again_does_not_inherit_passkeys(broker: Broker) -> None:
    alice, key = enrol("alice"), SoftAuthenticator()
    bob = enrol("bob", "--by", "alice", "--code", alice.recovery[0])
    broker.enrol_key(alice, key)
    request = broker.hold()
    options = broker.do("passkey_approve_begin", request=request)["options"]
    code, _, err = cli("totp", "remove", "alice", "--by", "bob", "--code", bob.code())
    assert code == 0, err
    enrol("alice", "--by", "bob", "--code", bob.recovery[0])
    assert broker.do("passkeys") == []
    with pytest.raises(BlindkeyError, match="earlier approver alice"):
        broker.do("passkey_approve_finish", request=request, origin=ORIGIN,
                  credential=key.assertion(options, ORIGIN))  # fmt: skip
    assert broker.do("grants") == []
