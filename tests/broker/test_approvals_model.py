"""The approvals state's one decode and one encode: the stored format is the one the
untyped code wrote, and a stored state of the wrong shape refuses the file instead of
being read as something else (a string of approvers counted as approvals, say)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from blindkey.broker.approvals.model import ANY_SOURCE, Malformed, decode_state, encode_state
from blindkey.broker.approvals.service import Approvals
from blindkey.broker.approvals.store import ApprovalsUnreadable
from blindkey.config.paths import Paths

T0 = 1_800_000_000.0

# A state as the dict-based code wrote it: every key, in its order.
STORED: dict[str, Any] = {
    "approvers": {
        "alice": {
            "seed": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
            "active": True,
            "created": T0,
            "recovery": ["00ff$aa11"],
            "used_steps": [60_000_000, 60_000_001],
            "wrong": {"uid:1000": [T0 + 1.5]},
            "locked_until": {"uid:1001": T0 + 300},
            "recovery_used": ["11ee$bb22"],
        },
        "bob": {
            "seed": "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU",
            "active": False,
            "created": T0 + 5,
            "recovery": [],
            "used_steps": [],
            "wrong": {},
            "locked_until": {},
        },
    },
    "grants": [
        {
            "id": "g_0123456789ab",
            "secret": "GITHUB_TOKEN",
            "env": "development",
            "agent": "*",
            "scope": None,
            "created": T0,
            "expires": T0 + 14_400,
            "span": 14_400,
            "approvers": ["alice"],
            "needed": 1,
        },
        {
            "id": "g_ba9876543210",
            "secret": "STRIPE_KEY",
            "env": "production",
            "agent": "claude",
            "scope": ["https", "api.stripe.com", 443],
            "created": T0,
            "expires": T0 + 600,
            "span": 900.0,
            "approvers": [],
            "needed": 2,
        },
    ],
    "floors": {"STRIPE_KEY": {"tier": "restricted", "approvals": 2}},
    "elevate": {"ops": {"expires": T0 + 1800, "approver": "alice"}},
}


def test_the_stored_format_is_unchanged() -> None:
    state = decode_state(copy.deepcopy(STORED))
    assert encode_state(state) == STORED
    assert state.grants[1].scope == ("https", "api.stripe.com", 443)
    assert not state.grants[1].complete and state.grants[0].complete
    assert state.approvers["alice"].locked_until == {"uid:1001": T0 + 300}


def test_the_older_lockout_format_still_locks() -> None:
    older = copy.deepcopy(STORED)
    older["approvers"]["alice"].update(locked_until=T0 + 200, wrong=[T0])
    record = decode_state(older).approvers["alice"]
    assert record.locked_until == {ANY_SOURCE: T0 + 200} and record.wrong == {}


def _corrupt(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    state = copy.deepcopy(STORED)
    target = state
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return state


CORRUPTIONS = [
    # A string of approvers: len("alice, bob") would count ten approvals.
    (("grants", 1, "approvers"), "alice, bob"),
    (("grants", 1, "needed"), "2"),
    (("grants", 1, "needed"), 0),
    (("grants", 0, "expires"), "never"),
    (("grants", 0, "expires"), True),
    (("grants", 1, "scope"), ["https", "api.stripe.com"]),
    (("grants", 0, "secret"), None),
    (("grants",), {"GITHUB_TOKEN": "*"}),
    (("floors", "STRIPE_KEY", "tier"), "secret"),
    (("floors", "STRIPE_KEY"), "restricted"),
    (("approvers", "alice", "active"), "yes"),
    (("approvers", "alice", "used_steps"), ["60000000"]),
    (("approvers", "alice", "locked_until"), {"uid:1001": "later"}),
    (("approvers", "alice", "seed"), 12),
    (("elevate", "ops"), T0 + 1800),
]


@pytest.mark.parametrize(("path", "value"), CORRUPTIONS)
def test_a_malformed_state_is_refused(path: tuple[Any, ...], value: Any) -> None:
    with pytest.raises(Malformed):
        decode_state(_corrupt(path, value))


def test_a_malformed_file_is_refused_whole(home: Paths) -> None:
    approvals = Approvals(home, lambda: T0 + 10)
    approvals.file.write_stored(_corrupt(("grants", 1, "approvers"), "alice, bob"))
    with pytest.raises(ApprovalsUnreadable, match="approvers is not a list of strings"):
        approvals.load()
    # The code before this model counted len("alice, bob") as ten approvals: in force.
    stripe = ("https", "api.stripe.com", 443)
    assert not approvals.in_force("STRIPE_KEY", "production", "claude", stripe)
    assert not approvals.in_force("GITHUB_TOKEN", "development", "claude")
