"""Checking an approver's code: TOTP with one step of drift, once per step, recovery codes
once each, and a lockout after 5 wrong codes in 5 minutes.

Every outcome is decided on the approver's record in the approvals file, under its lock,
so two commands racing with the same code cannot both pass.
"""

from __future__ import annotations

import base64
from typing import Any

from blindkey.broker.approvals import totp
from blindkey.broker.approvals.model import ANY_SOURCE, Approver
from blindkey.config.errors import BlindkeyError

MAX_WRONG = 5
WRONG_WINDOW = 300.0
LOCKOUT = 300.0
# CLI exit status for a refused code (INTERFACE.md: exit code 4).
EXIT_CODE_REFUSED = 4
# kind -> the broker's error code
KINDS = {"wrong": "code_wrong", "reused": "code_reused", "locked": "locked_out"}


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
    return Approver(seed=totp.b32(seed), created=now)


def seed_of(record: Approver) -> bytes:
    return base64.b32decode(record.seed + "=" * (-len(record.seed) % 8))


def locked_until(record: Approver, now: float, source: str | None = None) -> float | None:
    """When `source`'s lockout ends (None: not locked); with no source, any source's."""
    locks = record.locked_until
    if source is not None:
        locks = {k: v for k, v in locks.items() if k in (source, ANY_SOURCE)}
    until = max(locks.values(), default=0.0)
    return until if until > now else None


def check_code(name: str, record: Approver, code: str, now: float, source: str) -> dict[str, Any]:
    """Accept the code (and consume it) or raise CodeRefused; the record is updated either
    way. Returns audit fields of the acceptance (recovery: True when a recovery code).

    Wrong TOTP codes lock the approver for the source they came from (the Unix user of the
    CLI, as the broker's socket tells it), not for everyone. A recovery code is never
    locked out and never counts toward a lockout: it is the way back in when someone else
    keeps the approver locked, and at 60 bits behind scrypt it cannot be guessed."""
    code = code.strip()
    if not totp.is_totp_shape(code):
        return _recovery(name, record, code)
    until = locked_until(record, now, source)
    if until is not None:
        raise CodeRefused(
            "locked",
            name,
            f"approver {name} is locked out after {MAX_WRONG} wrong codes; "
            f"try again in {int(until - now) + 1}s (even a right code is refused until then; "
            "a recovery code still works)",
        )
    step = totp.matching_step(seed_of(record), code, now)
    if step is not None:
        if step in record.used_steps:
            raise CodeRefused(
                "reused",
                name,
                f"that code of {name} was already used; wait for the next one in the app",
            )
        # Steps older than the drift window can never match again: no need to keep them.
        current = totp.step_at(now)
        kept = [s for s in record.used_steps if s >= current - 2 * totp.DRIFT]
        record.used_steps = [*kept, step]
        record.wrong.pop(source, None)
        return {"recovery": False}
    wrong = [t for t in record.wrong.get(source, []) if now - t < WRONG_WINDOW]
    wrong.append(now)
    if len(wrong) >= MAX_WRONG:
        record.locked_until[source] = now + LOCKOUT
        record.wrong.pop(source, None)
        raise CodeRefused(
            "locked",
            name,
            f"wrong code for {name}; that was {MAX_WRONG} wrong codes within "
            f"{int(WRONG_WINDOW // 60)} minutes: {name} is locked out for "
            f"{int(LOCKOUT // 60)} minutes (a recovery code still works)",
        )
    record.wrong[source] = wrong
    raise CodeRefused(
        "wrong",
        name,
        f"wrong code for {name} ({MAX_WRONG - len(wrong)} more and {name} is locked out "
        f"for {int(LOCKOUT // 60)} minutes); check the phone's clock and the approver's name",
    )


def _recovery(name: str, record: Approver, code: str) -> dict[str, Any]:
    hashes = record.recovery
    for stored in hashes:
        if totp.recovery_matches(code, stored):
            record.recovery = [h for h in hashes if h is not stored]
            # Kept (hashed, like the unused ones) to tell a used code from a wrong one.
            record.recovery_used = [*record.recovery_used, stored]
            return {"recovery": True, "recovery_left": len(record.recovery)}
    if any(totp.recovery_matches(code, h) for h in record.recovery_used):
        raise CodeRefused(
            "reused",
            name,
            f"recovery code already used: each of {name}'s recovery codes works once "
            f"({len(hashes)} unused left)",
        )
    raise CodeRefused(
        "wrong",
        name,
        f"wrong code for {name}: neither a 6-digit code nor one of {name}'s unused recovery codes",
    )
