"""The approvals state, typed: approvers, grants, tier floors and elevated windows as the
approvals file holds them, and the marker beside it.

`decode_state` is the one way in from the stored dict and `encode_state` the one way back;
the stored format is what it was when these were plain dicts. A field of the wrong type
refuses the whole file (`Malformed`): a damaged store must never be read as a smaller one,
since a missing floor or lockout would release more than an approver allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

RANK = {"open": 0, "controlled": 1, "restricted": 2}
# What a grant approved from a request covers: that request's scheme, host and port. A
# grant without one (`approve SECRET`) covers every destination the secret may reach.
Scope = tuple[str, str, int]
# Lockouts written before they were kept per source: they hold for every source.
ANY_SOURCE = "*"
T = TypeVar("T")


class Malformed(ValueError):
    """The stored approvals state does not have the shape this version writes."""


@dataclass(slots=True)
class Approver:
    """One approver's record; changed in place under the file's lock (codes.py)."""

    seed: str
    active: bool = False
    created: float = 0.0
    recovery: list[str] = field(default_factory=list)  # scrypt hashes of unused codes
    recovery_used: list[str] = field(default_factory=list)  # kept to say "already used"
    used_steps: list[int] = field(default_factory=list)  # TOTP steps already accepted
    wrong: dict[str, list[float]] = field(default_factory=dict)  # source -> wrong-code times
    locked_until: dict[str, float] = field(default_factory=dict)  # source -> lockout end


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    secret: str
    env: str
    agent: str  # "*": every agent
    scope: Scope | None
    created: float
    expires: float
    span: float  # how long it lasts once complete
    approvers: tuple[str, ...]
    needed: int

    @property
    def complete(self) -> bool:
        return len(self.approvers) >= self.needed

    def alive(self, now: float) -> bool:
        return self.expires > now

    @property
    def key(self) -> tuple[str, str, str, Scope | None]:
        return self.secret, self.env, self.agent, self.scope


@dataclass(frozen=True, slots=True)
class Floor:
    """The lowest tier and approvals count a secret may be served with."""

    tier: str
    approvals: int


@dataclass(frozen=True, slots=True)
class Window:
    """An elevated window (elevate.py) of one user."""

    expires: float
    approver: str


@dataclass(slots=True)
class ApprovalsState:
    approvers: dict[str, Approver] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)
    floors: dict[str, Floor] = field(default_factory=dict)
    elevate: dict[str, Window] = field(default_factory=dict)

    def has_approvers(self) -> bool:
        return any(record.active for record in self.approvers.values())


@dataclass(frozen=True, slots=True)
class Mark:
    """What the broker must know when the approvals file cannot be read (store.py)."""

    approvers: int
    floors: dict[str, Floor]


# --- decode: the stored dict, checked field by field -------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _field(data: Mapping[str, Any], key: str, default: object) -> object:
    """The stored value (or `default` when absent); a required field has no default."""
    value = data.get(key)
    if value is not None:
        return value
    if default is None:
        raise Malformed(f"{key} is missing")
    return default


def _text(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = _field(data, key, default)
    if not isinstance(value, str):
        raise Malformed(f"{key} is not a string")
    return value


def _float(data: Mapping[str, Any], key: str, default: float | None = None) -> float:
    return _number(_field(data, key, default), key)


def _int(data: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = _field(data, key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed(f"{key} is not an integer")
    return value


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise Malformed(f"{key} is not true or false")
    return value


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Malformed(f"{what} is not an object")
    return value


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Malformed(f"{what} is not a list of strings")
    return list(value)


def _each(value: object, what: str, decode: Callable[[object, str], T]) -> dict[str, T]:
    return {key: decode(item, f"{what}.{key}") for key, item in _mapping(value, what).items()}


def _numbers(value: object, what: str) -> list[float]:
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise Malformed(f"{what} is not a list of numbers")
    return [float(v) for v in value]


def _number(value: object, what: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Malformed(f"{what} is not a number")
    return float(value)


def decode_approver(value: object, what: str = "approver") -> Approver:
    data = _mapping(value, what)
    steps = data.get("used_steps", [])
    if not isinstance(steps, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in steps
    ):
        raise Malformed(f"{what}.used_steps is not a list of integers")
    wrong, locked = data.get("wrong", {}), data.get("locked_until", {})
    # The older format: one lockout for everyone (kept, for every source), one list of
    # wrong codes (dropped: at worst four wrong codes are forgotten once).
    if isinstance(wrong, list):
        wrong = {}
    if _is_number(locked):
        locked = {ANY_SOURCE: float(locked)} if locked else {}
    return Approver(
        seed=_text(data, "seed"),
        active=_flag(data, "active"),
        created=_float(data, "created", 0.0),
        recovery=_strings(data.get("recovery", []), f"{what}.recovery"),
        recovery_used=_strings(data.get("recovery_used", []), f"{what}.recovery_used"),
        used_steps=list(steps),
        wrong=_each(wrong, f"{what}.wrong", _numbers),
        locked_until=_each(locked, f"{what}.locked_until", _number),
    )


def _scope(value: object, what: str) -> Scope | None:
    if not value:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not isinstance(value[1], str)
        or not isinstance(value[2], int)
        or isinstance(value[2], bool)
    ):
        raise Malformed(f"{what} is not [scheme, host, port]")
    return value[0], value[1], value[2]


def decode_grant(value: object, what: str = "grant") -> Grant:
    data = _mapping(value, what)
    needed = _int(data, "needed")
    if needed < 1:
        raise Malformed(f"{what}.needed is below 1")
    return Grant(
        id=_text(data, "id"),
        secret=_text(data, "secret"),
        env=_text(data, "env"),
        agent=_text(data, "agent"),
        scope=_scope(data.get("scope"), f"{what}.scope"),
        created=_float(data, "created", 0.0),
        expires=_float(data, "expires"),
        span=_float(data, "span"),
        approvers=tuple(_strings(data.get("approvers"), f"{what}.approvers")),
        needed=needed,
    )


def decode_floor(value: object, what: str = "floor") -> Floor:
    data = _mapping(value, what)
    tier, approvals = _text(data, "tier", "open"), _int(data, "approvals", 1)
    if tier not in RANK or approvals < 1:
        raise Malformed(f"{what} is not a tier and an approvals count")
    return Floor(tier, approvals)


def _window(value: object, what: str) -> Window:
    data = _mapping(value, what)
    return Window(_float(data, "expires", 0.0), _text(data, "approver", ""))


def decode_state(value: object) -> ApprovalsState:
    data = _mapping(value, "approvals state")
    grants = data.get("grants", [])
    if not isinstance(grants, list):
        raise Malformed("grants is not a list")
    return ApprovalsState(
        approvers=_each(data.get("approvers", {}), "approvers", decode_approver),
        grants=[decode_grant(g, f"grants[{i}]") for i, g in enumerate(grants)],
        floors=_each(data.get("floors", {}), "floors", decode_floor),
        elevate=_each(data.get("elevate", {}), "elevate", _window),
    )


def decode_mark(value: object) -> Mark:
    data = _mapping(value, "approvals marker")
    approvers = data.get("approvers") or 0
    if not isinstance(approvers, int) or isinstance(approvers, bool):
        raise Malformed("approvers is not an integer")
    return Mark(approvers, _each(data.get("floors"), "floors", decode_floor))


# --- encode: the stored dict, as it always was --------------------------------------------


def encode_approver(record: Approver) -> dict[str, Any]:
    data: dict[str, Any] = {
        "seed": record.seed,
        "active": record.active,
        "created": record.created,
        "recovery": list(record.recovery),
        "used_steps": list(record.used_steps),
        "wrong": {source: list(times) for source, times in record.wrong.items()},
        "locked_until": dict(record.locked_until),
    }
    if record.recovery_used:
        data["recovery_used"] = list(record.recovery_used)
    return data


def encode_grant(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "secret": grant.secret,
        "env": grant.env,
        "agent": grant.agent,
        "scope": list(grant.scope) if grant.scope is not None else None,
        "created": grant.created,
        "expires": grant.expires,
        "span": grant.span,
        "approvers": list(grant.approvers),
        "needed": grant.needed,
    }


def encode_floors(floors: Mapping[str, Floor]) -> dict[str, Any]:
    return {name: {"tier": f.tier, "approvals": f.approvals} for name, f in floors.items()}


def encode_state(state: ApprovalsState) -> dict[str, Any]:
    return {
        "approvers": {name: encode_approver(a) for name, a in state.approvers.items()},
        "grants": [encode_grant(g) for g in state.grants],
        "floors": encode_floors(state.floors),
        "elevate": {
            user: {"expires": w.expires, "approver": w.approver}
            for user, w in state.elevate.items()
        },
    }


def encode_mark(mark: Mark) -> dict[str, Any]:
    return {"approvers": mark.approvers, "floors": encode_floors(mark.floors)}


def mark_of(state: ApprovalsState) -> Mark:
    active = sum(1 for record in state.approvers.values() if record.active)
    return Mark(active, dict(state.floors))
