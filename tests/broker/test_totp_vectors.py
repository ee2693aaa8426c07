"""TOTP codes checked against RFC 6238 itself (appendix B, the SHA-1 vectors), not against
another implementation: a wrong digest, counter or truncation in pyotp or in our use of it
is caught.

The RFC's vectors are 8 digits; a 6-digit code is the same number mod 10^6 (RFC 4226,
5.3), so its last six digits are what an authenticator shows at that time."""

from __future__ import annotations

import base64
import hashlib

import pyotp
import pytest

from blindkey.broker.approvals import totp

# RFC 6238 appendix B: the SHA-1 seed is the ASCII string "12345678901234567890".
RFC_SEED = b"12345678901234567890"
RFC_SHA1 = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("when", "code"), RFC_SHA1)
def test_rfc_6238_sha1_vectors(when: int, code: str) -> None:
    # The library verification runs on gives the RFC's codes, in 8 digits and in 6.
    seed32 = base64.b32encode(RFC_SEED).decode()
    assert pyotp.TOTP(seed32, digits=8, digest=hashlib.sha1).at(when) == code
    assert totp.code_at(RFC_SEED, when // 30) == code[-6:]
    # And an approver whose phone shows it is accepted for that step, and only that one.
    assert totp.matching_step(RFC_SEED, code[-6:], when) == when // 30
    assert totp.matching_step(RFC_SEED, code[-6:], when + 90) is None
