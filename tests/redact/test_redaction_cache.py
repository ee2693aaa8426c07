"""The compiled matcher kept on disk (redact/cache.py): a start reads it back instead of
compiling, and what it reads back finds every span the compiled one finds; a file that is
stale, edited, swapped or sealed under another key is compiled anew, never trusted; a
removed value leaves nothing behind that matches it."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindkey.redact import cache as cache_module
from blindkey.redact import shards
from blindkey.redact.cache import ShardCache, derive_key
from blindkey.redact.redactor import Redactor
from tests.redact.test_many_secrets import many
from tests.redact.test_redactor import forms_of

SHARD_VALUES = 8
COUNT = 5 * SHARD_VALUES
KEY = derive_key(b"the broker's secret")


@pytest.fixture(autouse=True)
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "SHARD_VALUES", SHARD_VALUES)


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The Hyperscan databases compiled (the real compile, counted)."""
    counted: list[int] = []
    real = shards._compiled

    def counting(*args: object, **kwargs: object) -> object:
        counted.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shards, "_compiled", counting)
    return counted


def fresh_process() -> None:
    """What a new proxy process starts with: no shards of an earlier build in memory."""
    shards._recent.keep({})


def built(values: dict[str, str], directory: Path, key: bytes = KEY) -> Redactor:
    fresh_process()
    return Redactor(values, ShardCache(directory, key))


def corpus(values: dict[str, str]) -> Iterator[bytes]:
    """Each value in each spelling the matcher or a view finds, in some text."""
    for value in values.values():
        for form in forms_of(value).values():
            yield b"text " + form + b" more"
        yield value.encode("utf-16-le")
        encoded = base64.b64encode(value.encode())
        yield b"\n".join(encoded[i : i + 20] for i in range(0, len(encoded), 20))
        yield "".join(f"\\u{ord(c):04x}" for c in value).encode()
        yield "".join(f"%{ord(c):02X}" for c in value).encode()


def spans(redactor: Redactor, values: dict[str, str]) -> list[object]:
    return [redactor._matches(data) for data in corpus(values)]


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_a_cached_start_compiles_nothing_and_finds_every_span(
    tmp_path: Path, compiles: list[int]
) -> None:
    values = many(COUNT)
    compiled = built(values, tmp_path)
    assert len(compiled.shards) >= 4 and compiles
    compiles.clear()
    cached = built(values, tmp_path)
    assert compiles == []
    assert spans(cached, values) == spans(compiled, values)
    assert all(found for found in spans(cached, values))
    for field in ("hold", "view_hold", "max_len", "min_len"):
        assert getattr(cached, field) == getattr(compiled, field), field
    fresh_process()
    assert spans(Redactor(values), values) == spans(cached, values)


def test_the_files_hold_no_value_in_any_form_and_are_the_owners_only(tmp_path: Path) -> None:
    values = many(COUNT)
    directory = tmp_path / "cache"
    built(values, directory)
    assert directory.stat().st_mode & 0o777 == 0o700
    stored = files(directory)
    assert len(stored) == len(built(values, directory).shards)
    for name, blob in stored.items():
        assert (directory / name).stat().st_mode & 0o777 == 0o600
        for value in values.values():
            for form in forms_of(value).values():
                assert form[:12] not in blob


def test_a_changed_value_compiles_its_shard_alone_and_its_old_file_goes(
    tmp_path: Path, compiles: list[int]
) -> None:
    values = many(COUNT)
    built(values, tmp_path)
    before = files(tmp_path)
    changed = {**values, "KEY_3": "a-new-value-for-key-3-0123456789"}
    compiles.clear()
    redactor = built(changed, tmp_path)
    assert 0 < len(compiles) <= 2  # one shard: its literal and caseless databases
    after = files(tmp_path)
    assert len(after) == len(before) and len(set(after) - set(before)) == 1
    out, _ = redactor.redact(f"{values['KEY_3']} {changed['KEY_3']}".encode())
    assert out == f"{values['KEY_3']} [REDACTED:KEY_3]".encode()


def test_a_removed_value_is_not_matched_from_what_was_stored(tmp_path: Path) -> None:
    values = many(COUNT)
    built(values, tmp_path)
    gone = values["KEY_5"]
    remaining = {name: value for name, value in values.items() if name != "KEY_5"}
    redactor = built(remaining, tmp_path)
    out, count = redactor.redact(f"<{gone}>".encode())
    assert (out, count) == (f"<{gone}>".encode(), 0)
    # Its shard's old file is deleted with the build: nothing on disk holds it any more.
    assert len(files(tmp_path)) == len(redactor.shards)
    fresh_process()
    assert Redactor(remaining).redact(f"<{gone}>".encode())[1] == 0


def test_a_value_kept_under_another_name_is_still_redacted(tmp_path: Path) -> None:
    values = many(COUNT)
    built(values, tmp_path)
    moved = {name: value for name, value in values.items() if name != "KEY_5"}
    moved["RENAMED"] = values["KEY_5"]
    out, _ = built(moved, tmp_path).redact(f"<{values['KEY_5']}>".encode())
    assert out == b"<[REDACTED:RENAMED]>"


@pytest.mark.parametrize("where", ["magic", "nonce", "middle", "tag"])
def test_an_edited_file_is_compiled_anew_never_trusted(
    tmp_path: Path, compiles: list[int], where: str
) -> None:
    values = many(COUNT)
    reference = spans(built(values, tmp_path), values)
    stored = files(tmp_path)
    for name, blob in stored.items():
        at = {"magic": 0, "nonce": 7, "middle": len(blob) // 2, "tag": len(blob) - 1}[where]
        (tmp_path / name).write_bytes(blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :])
    compiles.clear()
    redactor = built(values, tmp_path)
    assert len(compiles) >= len(stored)  # every shard compiled again
    assert spans(redactor, values) == reference
    rewritten = files(tmp_path)
    assert set(rewritten) == set(stored)
    assert all(rewritten[name] != stored[name] for name in stored)  # sealed afresh


def test_a_cut_file_is_compiled_anew(tmp_path: Path, compiles: list[int]) -> None:
    values = many(COUNT)
    reference = spans(built(values, tmp_path), values)
    for name, blob in files(tmp_path).items():
        (tmp_path / name).write_bytes(blob[: len(blob) // 3])
    compiles.clear()
    assert spans(built(values, tmp_path), values) == reference
    assert compiles


def test_a_file_swapped_for_another_shards_is_not_used(tmp_path: Path) -> None:
    """Every file in place of another: each decrypts only under its own name, so a shard
    never stands in for a group whose values it does not hold."""
    values = many(COUNT)
    built(values, tmp_path)
    stored = files(tmp_path)
    names = list(stored)
    for name, other in zip(names, names[1:] + names[:1], strict=True):
        (tmp_path / name).write_bytes(stored[other])
    redactor = built(values, tmp_path)
    for name, value in values.items():
        assert redactor.redact(value.encode()) == (f"[REDACTED:{name}]".encode(), 1), name


def test_files_sealed_under_another_key_are_not_read_and_go(
    tmp_path: Path, compiles: list[int]
) -> None:
    values = many(COUNT)
    built(values, tmp_path, derive_key(b"another broker"))
    old = files(tmp_path)
    compiles.clear()
    redactor = built(values, tmp_path)
    assert len(compiles) >= len(old)
    assert not set(files(tmp_path)) & set(old)
    assert all(redactor.redact(value.encode())[1] == 1 for value in values.values())


def test_files_of_other_code_are_not_read(
    tmp_path: Path, compiles: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forms added by an upgrade must be matched: a cache written by other code (or another
    Hyperscan) is looked for under other names."""
    values = many(COUNT)
    built(values, tmp_path)
    monkeypatch.setattr(cache_module, "_code_digest", lambda: b"another build")
    compiles.clear()
    built(values, tmp_path)
    assert compiles


def test_a_cache_that_cannot_be_written_costs_only_the_compile(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_bytes(b"")
    values = many(COUNT)
    redactor = built(values, blocked)
    assert all(redactor.redact(value.encode())[1] == 1 for value in values.values())


def test_the_key_is_the_brokers_secret_run_one_way() -> None:
    assert derive_key(b"a") != derive_key(b"b") and len(derive_key(b"a")) == 32
    assert b"a" not in derive_key(b"a")
    with pytest.raises(ValueError, match="32 bytes"):
        ShardCache(Path(os.devnull), b"short")
