"""The default config.toml is rendered from the model: reading it back gives the defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomlkit
from hypothesis import given
from hypothesis import strategies as st
from tomlkit.items import Table

from blindkey.config.edit import toml_table
from blindkey.config.loader import parse_duration, parse_settings, parse_size
from blindkey.config.model import Settings
from blindkey.config.template import DEFAULT_CONFIG, toml_duration, toml_size


def test_the_default_file_reads_back_as_the_model_defaults() -> None:
    assert parse_settings(Path("config.toml"), tomllib.loads(DEFAULT_CONFIG)) == Settings()


def test_an_empty_file_means_the_same_defaults() -> None:
    assert parse_settings(Path("config.toml"), {}) == Settings()


@given(st.integers(1, 10**6), st.sampled_from([0.001, 1, 60, 3600]))
def test_durations_round_trip(count: int, unit: float) -> None:
    seconds = count * unit
    assert abs(parse_duration(tomllib.loads(f"d = {toml_duration(seconds)}")["d"]) - seconds) < 1e-6


@given(st.integers(1, 2**40))
def test_sizes_round_trip(size: int) -> None:
    assert parse_size(tomllib.loads(f"s = {toml_size(size)}")["s"]) == size


def test_each_table_of_the_default_file_is_one_table_the_cli_can_edit() -> None:
    """A table written between `[audit]` and `[audit.ship]` would split `[audit]` in two:
    valid TOML, but tomlkit then hands the CLI's edits a proxy, not the table."""
    document = tomlkit.parse(DEFAULT_CONFIG)
    for name in ("audit", "audit.ship", "metrics", "notify", "policy"):
        table = toml_table(document, *name.split("."))
        assert isinstance(table, Table), name
