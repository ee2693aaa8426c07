"""Many secrets (issue 24 item 8): the matcher is built in shards of a few hundred values,
a rebuild compiles only the shards whose values changed, and every value in every shard is
still caught in every form and chunking."""

from __future__ import annotations

import base64
import random
import string

import pytest

from blindkey.redact import shards
from blindkey.redact.redactor import Redactor
from tests.redact.test_redactor import forms_of, redact_all

# Small shards, so a few dozen values make several (the same code as 256 a shard).
SHARD_VALUES = 8
COUNT = 5 * SHARD_VALUES
ALPHABET = string.ascii_letters + string.digits + "-_+/=&"


@pytest.fixture(autouse=True)
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "SHARD_VALUES", SHARD_VALUES)


def many(count: int, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"KEY_{i}": "".join(rng.choices(ALPHABET, k=40)) for i in range(count)}


def reused(old: Redactor, new: Redactor) -> tuple[int, int]:
    """How many of `new`'s shards are `old`'s very objects, and how many are not."""
    kept = {id(shard) for shard in old.shards}
    same = sum(id(shard) in kept for shard in new.shards)
    return same, len(new.shards) - same


def test_values_in_every_shard_are_caught_in_every_form_and_chunking() -> None:
    values = many(COUNT)
    redactor = Redactor(values)
    assert len(redactor.shards) >= 4
    for name in random.Random(1).sample(sorted(values), 12):
        mark = f"[REDACTED:{name}]".encode()
        for label, form in forms_of(values[name]).items():
            data = b"<" + form + b">"
            for cut in (1, len(data) // 2, len(data) - 1):
                out = redact_all(redactor, [data[:cut], data[cut:]])
                assert mark in out and form[4:-4] not in out, (name, label, cut)


def test_the_hold_is_the_longest_form_of_any_shard() -> None:
    values = many(COUNT)
    long_value = "L" * 700  # its UTF-32 form is 2,800 bytes: a hold of 4,096
    alone = Redactor({"LONG": long_value})
    together = Redactor({**values, "LONG": long_value})
    assert together.hold == alone.hold == 4096
    assert together.hold_length(10**6, ()) == alone.hold_length(10**6, ())


def test_a_change_to_one_value_compiles_only_its_shard() -> None:
    values = many(COUNT, seed=2)
    old = Redactor(values)
    changed = {**values, "KEY_7": "rotated-" + values["KEY_7"][8:]}
    new = Redactor(changed)
    assert reused(old, new) == (len(old.shards) - 1, 1)
    assert new.redact(changed["KEY_7"].encode()) == (b"[REDACTED:KEY_7]", 1)
    assert new.redact(values["KEY_7"].encode())[1] == 0
    for name in ("KEY_1", "KEY_30", f"KEY_{COUNT - 1}"):
        assert new.redact(base64.b64encode(values[name].encode()))[1] == 1


def test_a_rebuild_with_the_same_values_compiles_nothing() -> None:
    values = many(COUNT, seed=3)
    old = Redactor(values)
    assert reused(old, Redactor(dict(reversed(values.items())))) == (len(old.shards), 0)


def test_an_added_and_a_removed_value_are_applied() -> None:
    values = many(COUNT, seed=4)
    Redactor(values)
    del values["KEY_5"]
    values["ADDED"] = "added-secret-value-0123456789"
    redactor = Redactor(values)
    assert redactor.redact(b"x added-secret-value-0123456789 y") == (b"x [REDACTED:ADDED] y", 1)
    assert redactor.redact(many(COUNT, seed=4)["KEY_5"].encode())[1] == 0


def test_one_span_of_two_values_in_two_shards_is_named_after_the_longer() -> None:
    """A pair's password equal to another secret: the same bytes match in both shards."""
    count = shards.shard_count(COUNT + 2)
    solo = shards.shard_of("SOLO", count)
    pair_name = next(f"P{i}" for i in range(1000) if shards.shard_of(f"P{i}", count) != solo)
    values = {**many(COUNT), pair_name: "user:shared-password-9876", "SOLO": "shared-password-9876"}
    redactor = Redactor(values)
    out, count_found = redactor.redact(b"p=shared-password-9876;")
    assert (out, count_found) == (f"p=[REDACTED:{pair_name}];".encode(), 1)
