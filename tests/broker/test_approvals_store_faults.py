"""A broken approvals file (truncated, half, one flipped byte, random bytes, deleted once
approvers existed) is refused, not read as empty: a broker (re)started on it releases no
secret an approver ever raised above open, even after config.toml was lowered by hand, says
why, and serves again by itself once the file is restored. Real files, a real BrokerState,
approvers enrolled through the real CLI."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.approvals.store import approvals_file, approvals_health, mark_file
from blindkey.broker.state import BrokerState
from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.approvals_helpers import cli, enrol
from tests.proxy.conftest import set_secret_policy

VALUE = "restricted-value-8888"
OPEN_VALUE = "open-value-1111"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:20])


def _half(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _flip(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(len(path.read_bytes())))


def _delete(path: Path) -> None:
    path.unlink()


FAULTS: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "half": _half,
    "flipped_byte": _flip,
    "random_bytes": _random,
    "deleted": _delete,
}


def _restricted_home(home: Paths) -> tuple[str, bytes]:
    """An approver, RESTR raised to restricted (the broker keeps that floor), and the
    approvals file as it then was."""
    vault = FileVault(home)
    vault.set("development", "RESTR", VALUE)
    vault.set("development", "OPEN", OPEN_VALUE)
    token = AgentStore(home.agents_file, home.lock_file).add("claude")
    enrol()
    set_secret_policy(home, "RESTR", tier="restricted")
    state = BrokerState(home)
    assert state.refresh()
    assert state.resolve(token, ["RESTR"], "example.com").denied.code == "approval_required"  # type: ignore[union-attr]
    state.close()
    return token, approvals_file(home).read_bytes()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_approvals_file_releases_nothing_it_guarded(home: Paths, fault: str) -> None:
    token, good = _restricted_home(home)
    FAULTS[fault](approvals_file(home))
    # Lowered by hand: only the floor the approvals file kept stood in the way.
    set_secret_policy(home, "RESTR", tier="open")

    state = BrokerState(home)  # the broker, restarted
    state.refresh()
    answer = state.resolve(token, ["RESTR"], "example.com")
    assert answer.values == {}
    assert answer.denied is not None and answer.denied.code == "broker_unavailable"
    assert "approvals file cannot be read" in str(answer.denied)
    assert state.approvals.broken is not None
    assert str(approvals_file(home)) in state.approvals.broken
    # Never raised above open: still served (the marker keeps the floors).
    assert state.resolve(token, ["OPEN"], "example.com").values == {"OPEN": OPEN_VALUE}

    health = approvals_health(home)
    assert health["ok"] is False and health["approvers"] == 1
    assert "Restore it from a backup" in health["error"]
    code, _, err = cli("grants", "list")
    assert code != 0 and "approvals.bin" in err

    # Restored: served again by itself, at the floor an approver set (no grant: refused).
    approvals_file(home).write_bytes(good)
    assert state.expire() is True
    assert state.approvals.broken is None
    denied = state.resolve(token, ["RESTR"], "example.com").denied
    assert denied is not None and denied.code == "approval_required"
    assert approvals_health(home)["ok"] is True
    state.close()


def test_without_a_marker_every_secret_waits_for_the_file(home: Paths) -> None:
    token, _ = _restricted_home(home)
    _flip(approvals_file(home))
    mark_file(home).unlink()
    state = BrokerState(home)
    state.refresh()
    denied = state.resolve(token, ["OPEN"], "example.com").denied
    assert denied is not None and denied.code == "broker_unavailable"
    assert "no marker" in str(denied)
    state.close()


def test_a_fresh_home_has_no_broken_file(home: Paths) -> None:
    state = BrokerState(home)
    state.refresh()
    assert state.approvals.broken is None
    assert approvals_health(home) == {
        "ok": True, "file": str(approvals_file(home)), "error": None, "approvers": 0,
    }  # fmt: skip
    # Nothing to remember yet: no marker written.
    assert not mark_file(home).exists()
    state.close()
