"""Placeholders hold nothing of the value, differ per environment and secret, stay fixed
until the value changes, and their key is made once and never silently replaced."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from blindkey.broker.placeholders import (
    PlaceholderKeyError,
    ensure_key,
    find,
    key_file,
    placeholder,
    placeholders,
)
from blindkey.config.paths import Paths, ensure_dirs

KEY = bytes(range(32))
VALUE = "ghp_" + "x" * 36


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    found = Paths(config_dir=tmp_path, state_dir=tmp_path, runtime_dir=tmp_path / "run")
    ensure_dirs(found)
    return found


def test_the_shape_interface_md_gives() -> None:
    plain = placeholder(KEY, "default", "GITHUB_TOKEN", VALUE)
    assert re.fullmatch(r"bk_[A-Z2-7]{32}", plain)
    assert placeholder(KEY, "default", "GITHUB_TOKEN", VALUE, "sk-") == f"sk-{plain}"


def test_it_follows_the_value_and_nothing_else() -> None:
    base = placeholder(KEY, "default", "GH", VALUE)
    assert placeholder(KEY, "default", "GH", VALUE) == base
    others = {
        placeholder(KEY, "default", "GH", VALUE + "y"),
        placeholder(KEY, "staging", "GH", VALUE),
        placeholder(KEY, "default", "GH2", VALUE),
        placeholder(bytes(32), "default", "GH", VALUE),
        # The separator keeps (env, name) pairs apart: "a\0b" is not "a" + "\0b".
        placeholder(KEY, "defaultG", "H", VALUE),
    }
    assert base not in others and len(others) == 5


def test_no_part_of_the_value_shows() -> None:
    value = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" * 2
    body = placeholder(KEY, "default", "K", value).removeprefix("bk_")
    assert not any(value[i : i + 6] in body for i in range(len(value) - 5))


def test_every_value_of_an_environment() -> None:
    found = placeholders(KEY, "default", {"A": "1" * 20, "B": "2" * 20}, {"B": "sk-"})
    assert found["A"].startswith("bk_") and found["B"].startswith("sk-bk_")


def test_found_in_text_only_whole() -> None:
    one = placeholder(KEY, "default", "A", VALUE)
    text = f"Bearer {one}, {one}A, x{one[:-1]}, sk-{one}"
    assert find(text) == [one, one]


def test_the_key_is_made_once_and_private(paths: Paths) -> None:
    first = ensure_key(paths)
    assert len(first) == 32 and ensure_key(paths) == first
    assert stat.S_IMODE(key_file(paths).stat().st_mode) == 0o600


def test_a_damaged_key_is_refused_not_replaced(paths: Paths) -> None:
    ensure_key(paths)
    key_file(paths).write_bytes(b"short")
    with pytest.raises(PlaceholderKeyError, match="holds 5 bytes"):
        ensure_key(paths)
    assert key_file(paths).read_bytes() == b"short"
