"""CachedView's clock: what is served from memory, for how long, and what a change drops.

The store behind it is the real file vault; only the clock is the test's.
"""

from __future__ import annotations

import pytest

from blindkey.broker.backends.file import FileBackend
from blindkey.broker.cache import MISSING, CachedView
from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.state import BrokerState
from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def view(home: Paths) -> tuple[CachedView, Clock, FileVault]:
    vault = FileVault(home)
    vault.set("development", "GH", "gh-value")
    vault.set("development", "STRIPE", "stripe-value")
    clock = Clock()
    return CachedView(FileBackend(home), ttl=10.0, clock=clock), clock, vault


def test_a_value_is_served_for_ttl_then_must_be_read_again(
    view: tuple[CachedView, Clock, FileVault],
) -> None:
    cache, clock, vault = view
    assert cache.lookup("development", "GH") is MISSING
    assert cache.store("development", cache.fetch("development", ["GH"]), whole_env=False)
    assert cache.lookup("development", "GH") == "gh-value"
    vault.set("development", "GH", "changed-behind-its-back")
    clock.now += 9.9
    assert cache.lookup("development", "GH") == "gh-value", "served from memory"
    clock.now += 0.2
    assert cache.lookup("development", "GH") is MISSING
    assert cache.snapshot("development") == {}
    assert cache.expire() is True
    assert cache.entries == {}
    cache.store("development", cache.fetch("development", ["GH"]), whole_env=False)
    assert cache.lookup("development", "GH") == "changed-behind-its-back"


def test_absence_is_remembered_too(view: tuple[CachedView, Clock, FileVault]) -> None:
    cache, clock, _ = view
    fetched = cache.fetch("development", ["NOPE"])
    assert fetched == {"NOPE": None}
    assert cache.store("development", fetched, whole_env=False) is False, "nothing to serve"
    assert cache.lookup("development", "NOPE") is None
    clock.now += 11
    assert cache.lookup("development", "NOPE") is MISSING


def test_a_whole_environment_read_answers_every_name_and_drops_deleted_ones(
    view: tuple[CachedView, Clock, FileVault],
) -> None:
    cache, clock, vault = view
    assert cache.store("development", cache.fetch("development", None), whole_env=True)
    assert cache.snapshot("development") == {"GH": "gh-value", "STRIPE": "stripe-value"}
    assert cache.lookup("development", "NEVER_SET") is None, "known absent from the listing"
    assert cache.lookup("staging", "GH") is MISSING, "another environment is not listed"

    vault.delete("development", "STRIPE")
    clock.now += 5
    assert cache.store("development", cache.fetch("development", None), whole_env=True)
    assert cache.snapshot("development") == {"GH": "gh-value"}
    assert cache.lookup("development", "STRIPE") is None
    # the same answer again changes nothing, and renews the deadline
    assert cache.store("development", cache.fetch("development", None), whole_env=True) is False
    clock.now += 9
    assert cache.lookup("development", "GH") == "gh-value"


def test_forget_drops_exactly_what_changed(view: tuple[CachedView, Clock, FileVault]) -> None:
    cache, _, _ = view
    cache.store("development", cache.fetch("development", None), whole_env=True)
    assert cache.forget([("development", "GH")]) is True
    assert cache.lookup("development", "GH") is MISSING
    assert cache.lookup("development", "STRIPE") == "stripe-value"
    assert cache.lookup("development", "NEVER_SET") is MISSING, "the listing is stale now"
    assert cache.forget([("development", "GH")]) is False


def test_a_broker_without_a_valid_config_at_start_answers_unavailable(home: Paths) -> None:
    home.config_file.write_text("[backend]\nkind = 'openbao'\n")
    state = BrokerState(home)
    assert state.refresh() is False
    assert state.last_error is not None and "[backend] address: required" in state.last_error
    with pytest.raises(BrokerDenied) as info:
        state.resolve("bk_any-token", ["GH"], "x.io")
    assert info.value.code == "broker_unavailable"
    assert "[backend] address: required" in str(info.value)
