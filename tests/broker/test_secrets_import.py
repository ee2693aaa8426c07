"""`secrets import`'s .env reader: every spelling a .env file uses gives back the value
exactly, and a bad line is named by number, never shown."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindkey.broker import vault
from blindkey.broker.dotenv import parse_dotenv
from blindkey.broker.secrets_ops import import_values
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
# Printable, no quotes or backslashes (those need the quoted forms below), no " #".
PLAIN = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="\"'\\#"),
    min_size=8,
    max_size=40,
)


@given(NAMES, PLAIN)
def test_every_spelling_gives_the_value_back(name: str, value: str) -> None:
    for line in (
        f"{name}={value}",
        f"export {name}={value}",
        f"{name} = {value}  # a comment",
        f"{name}='{value}'",
        f'{name}="{value}"',
        f'  export {name}="{value}" # trailing',
    ):
        assert parse_dotenv(f"# header\n\n{line}\n") == {name: value}, line


@given(st.text(min_size=8, max_size=40).filter(lambda v: "'" not in v and "\n" not in v))
def test_single_quotes_keep_everything_inside(value: str) -> None:
    assert parse_dotenv(f"KEY='{value}'") == {"KEY": value}


def test_double_quotes_unescape() -> None:
    assert parse_dotenv('KEY="a \\"quoted\\" line\\nnext"') == {"KEY": 'a "quoted" line\nnext'}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("KEY=short", "line 1: KEY: shorter than"),
        ("NOEQUALS_sk_live_value", "line 1: not NAME=VALUE"),
        ("A=valuevalue1\nA=valuevalue2", "line 2: A is given twice"),
        ("\n\n9X=valuevalue", "line 3: '9X' is not a secret name"),
        ("K='valuevalue", "line 1: K: a quote is not closed"),
        ("# only a comment\n", "no NAME=VALUE lines"),
    ],
)
def test_bad_lines_are_named_by_number_not_shown(text: str, fragment: str) -> None:
    with pytest.raises(BlindkeyError) as caught:
        parse_dotenv(text)
    assert fragment in str(caught.value) and "valuevalue" not in str(caught.value)
    assert "sk_live_value" not in str(caught.value)


def test_many_values_are_stored_in_one_write(home: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env file of 2,000 lines is one decrypt and one sealed write of the vault, not
    2,000 (10,000 lines took minutes when each value rewrote the whole vault). The write is
    counted by wrapping the real one, which still runs."""
    writes = []
    real = vault.write_sealed

    def counted(*args: Any, **kwargs: Any) -> None:
        writes.append(args[0])
        real(*args, **kwargs)

    monkeypatch.setattr(vault, "write_sealed", counted)
    values = {f"KEY_{n:04d}": f"value-{n:04d}-{'x' * 24}" for n in range(2000)}
    env, names = import_values(home, values, None)
    assert len(writes) == 1 and names == sorted(values)
    assert vault.FileVault(home).load()[env] == values
