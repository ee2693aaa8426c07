"""A grant stops covering at its expiry by itself: the broker's resolve asks the index
between two expiry sweeps, so the index must not wait for the sweep to drop a grant."""

from __future__ import annotations

from dataclasses import replace

import pyotp

from blindkey.broker.approvals.grants import GrantIndex, new_grant
from blindkey.broker.approvals.service import Approvals
from blindkey.config.edit import edit_config, toml_table
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from tests.approvals_helpers import seed_of

T0 = 1_800_000_000.0  # a step boundary: 1_800_000_000 / 30 is whole
TARGET = ("https", "api.example.com", 443)


def test_an_expired_grant_covers_nothing_before_the_sweep(home: Paths) -> None:
    now = [T0 + 1]
    approvals = Approvals(home, lambda: now[0])
    app = pyotp.TOTP(seed_of(approvals.enroll(None, None, None)["otpauth_uri"]))
    approvals.confirm(None, app.at(now[0]))
    edit_config(
        home.config_file,
        home.lock_file,
        lambda document: toml_table(document, "secrets", "C").update(tier="controlled"),
    )
    settings = load_settings(home.config_file)
    now[0] += 30
    approvals.approve(
        settings=settings, secret="C", env="development", agent="bot", duration=600,
        code=app.at(now[0]),
    )  # fmt: skip
    assert approvals.in_force("C", "development", "bot", TARGET)
    now[0] += 599
    assert approvals.in_force("C", "development", "bot", TARGET)
    # Expired, and no sweep (`expire()`) has run since: the grant is still in the file and
    # in the index, and must cover nothing all the same.
    now[0] += 1
    assert not approvals.in_force("C", "development", "bot", TARGET)
    assert not approvals.in_force("C", "development", "bot", None)
    assert [g.expires for g in approvals.state.grants] == [now[0]]


def test_the_index_compares_each_grant_with_the_time_asked() -> None:
    waiting = new_grant("C", "development", "*", None, 1, 600.0, T0)
    complete = replace(waiting, approvers=("alice",), expires=T0 + 600)
    index = GrantIndex.of([complete])
    assert index.covers("C", "development", "bot", T0 + 599, TARGET)
    assert not index.covers("C", "development", "bot", T0 + 600, TARGET)
    assert not index.covers("C", "development", "bot", T0 + 10**6, None)
