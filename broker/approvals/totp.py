"""RFC 6238 codes (SHA-1, 6 digits, 30 s), otpauth:// URIs and recovery codes.

The codes are pyotp's (the library authenticator apps are tested against), checked against
the RFC's own vectors in the tests; which step within the drift window matched is decided
here, comparing in constant time. Recovery codes are kept only as scrypt hashes, slow
enough that a stolen file does not give them away by brute force over their 60 bits.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import secrets
import socket
from urllib.parse import quote, urlencode

import pyotp

STEP = 30
DIGITS = 6
SEED_BYTES = 20  # 160 bits, as RFC 4226 recommends
DRIFT = 1  # steps accepted either side of now
RECOVERY_CODES = 10
ISSUER = "blindkey"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def b32(seed: bytes) -> str:
    return base64.b32encode(seed).decode("ascii").rstrip("=")


def otpauth_uri(approver: str, seed: bytes, account: str) -> str:
    label = quote(f"{ISSUER}:{approver} ({account})", safe="@:")
    query = urlencode({"secret": b32(seed), "issuer": ISSUER, "algorithm": "SHA1",
                       "digits": DIGITS, "period": STEP})  # fmt: skip
    return f"otpauth://totp/{label}?{query}"


def step_at(now: float) -> int:
    return int(now // STEP)


def code_at(seed: bytes, step: int) -> str:
    """The code of time step `step` (RFC 6238: HOTP of the step counter)."""
    return str(pyotp.HOTP(b32(seed), digits=DIGITS, digest=hashlib.sha1).at(step))


def is_totp_shape(code: str) -> bool:
    return len(code) == DIGITS and code.isascii() and code.isdigit()


def matching_step(seed: bytes, code: str, now: float) -> int | None:
    """The time step within the drift window whose code this is, or None."""
    if not is_totp_shape(code):
        return None
    current = step_at(now)
    hotp = pyotp.HOTP(b32(seed), digits=DIGITS, digest=hashlib.sha1)
    found = None
    # Every step is compared (no early return): the time taken does not say which matched.
    for step in range(max(current - DRIFT, 0), current + DRIFT + 1):
        if hmac.compare_digest(str(hotp.at(step)).encode(), code.encode()) and found is None:
            found = step
    return found


def new_recovery_codes() -> list[str]:
    def one() -> str:
        chars = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(12))
        return f"{chars[:4]}-{chars[4:8]}-{chars[8:]}"

    return [one() for _ in range(RECOVERY_CODES)]


def normal_recovery(code: str) -> str:
    return "".join(c for c in code.lower() if c.isalnum())


def hash_recovery(code: str, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(normal_recovery(code).encode(), salt=salt, **_SCRYPT)
    return f"{salt.hex()}${digest.hex()}"


def recovery_matches(code: str, stored: str) -> bool:
    salt_hex, _, digest_hex = stored.partition("$")
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    candidate = hash_recovery(code, salt).partition("$")[2]
    return hmac.compare_digest(candidate, digest_hex)


def account() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
