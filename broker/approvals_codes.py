"""Checking an approver's code: TOTP with one step of drift, once per step, recovery codes
once each, and a lockout after 5 wrong codes in 5 minutes.

Every outcome is decided on the approver's record in the approvals file, under its lock,
so two commands racing with the same code cannot both pass.
"""

from __future__ import annotations

import base64
from typing import Any

from blindkey.broker import totp
from blindkey.config.errors import BlindkeyError

MAX_WRONG = 5
WRONG_WINDOW = 300.0
LOCKOUT = 300.0
# CLI exit status for a refused code (INTERFACE.md: exit code 4).
EXIT_CODE_REFUSED = 4
# kind -> the broker's error code
KINDS = {"wrong": "code_wrong", "reused": "code_reused", "locked": "locked_out"}
Approver = dict[str, Any]


class CodeRefused(BlindkeyError):
    """A code was refused: `kind` is wrong, reused or locked."""

    exit_code = EXIT_CODE_REFUSED

    def __init__(self, kind: str, approver: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.approver = approver

    @property
    def code(self) -> str:
        return KINDS[self.kind]


class CodeNeeded(BlindkeyError):
    """The change needs an approver's code and none was given (the CLI then asks for one)."""


def refusal_from(code: str, message: str) -> CodeRefused | None:
    """The broker's error code back into the refusal (CLI side of the socket)."""
    for kind, error in KINDS.items():
        if error == code:
            return CodeRefused(kind, "", message)
    return None


def new_approver(seed: bytes, now: float) -> Approver:
    return {
        "seed": totp.b32(seed),
        "active": False,
        "created": now,
        "recovery": [],
        "used_steps": [],
        "wrong": [],
        "locked_until": 0.0,
    }


def seed_of(record: Approver) -> bytes:
    text = str(record["seed"])
    return base64.b32decode(text + "=" * (-len(text) % 8))


def locked_until(record: Approver, now: float) -> float | None:
    until = float(record.get("locked_until", 0.0))
    return until if until > now else None


def check_code(name: str, record: Approver, code: str, now: float) -> dict[str, Any]:
    """Accept the code (and consume it) or raise CodeRefused; the record is updated either
    way. Returns audit fields of the acceptance (recovery: True when a recovery code)."""
    code = code.strip()
    until = locked_until(record, now)
    if until is not None:
        raise CodeRefused(
            "locked",
            name,
            f"approver {name} is locked out after {MAX_WRONG} wrong codes; "
            f"try again in {int(until - now) + 1}s (even a right code is refused until then)",
        )
    step = totp.matching_step(seed_of(record), code, now)
    if step is not None:
        used = [int(s) for s in record.get("used_steps", [])]
        if step in used:
            raise CodeRefused(
                "reused",
                name,
                f"that code of {name} was already used; wait for the next one in the app",
            )
        # Steps older than the drift window can never match again: no need to keep them.
        current = totp.step_at(now)
        record["used_steps"] = [s for s in used if s >= current - 2 * totp.DRIFT] + [step]
        record["wrong"] = []
        return {"recovery": False}
    if not totp.is_totp_shape(code):
        hashes = [str(h) for h in record.get("recovery", [])]
        for stored in hashes:
            if totp.recovery_matches(code, stored):
                hashes.remove(stored)
                record["recovery"] = hashes
                record["wrong"] = []
                return {"recovery": True, "recovery_left": len(hashes)}
    wrong = [float(t) for t in record.get("wrong", []) if now - float(t) < WRONG_WINDOW]
    wrong.append(now)
    if len(wrong) >= MAX_WRONG:
        record["locked_until"] = now + LOCKOUT
        record["wrong"] = []
        raise CodeRefused(
            "locked",
            name,
            f"wrong code for {name}; that was {MAX_WRONG} wrong codes within "
            f"{int(WRONG_WINDOW // 60)} minutes: {name} is locked out for "
            f"{int(LOCKOUT // 60)} minutes",
        )
    record["wrong"] = wrong
    raise CodeRefused(
        "wrong",
        name,
        f"wrong code for {name} ({MAX_WRONG - len(wrong)} more and {name} is locked out "
        f"for {int(LOCKOUT // 60)} minutes); check the phone's clock and the approver's name",
    )
