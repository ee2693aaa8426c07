"""write_atomic: 0600, no temp files left, and a failure half-way keeps the old content."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from blindkey.config.atomic import locked, write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_creates_file_0600_without_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    write_atomic(target, b"hello\n")
    assert target.read_bytes() == b"hello\n"
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_replaces_content_and_tightens_mode(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_bytes(b"old content that is longer than the new one\n")
    target.chmod(0o644)
    write_atomic(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_mode_argument_is_applied_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    old = os.umask(0o077)
    try:
        write_atomic(target, b"{}", mode=0o640)
    finally:
        os.umask(old)
    assert mode(target) == 0o640


def test_stale_loose_temp_file_from_a_crash_does_not_leak_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    stale = tmp_path / f".config.toml.{os.getpid()}.tmp"
    stale.write_bytes(b"half-written by a process that crashed")
    stale.chmod(0o666)
    write_atomic(target, b"fresh")
    assert target.read_bytes() == b"fresh"
    assert mode(target) == 0o600
    assert not stale.exists()


def test_empty_data(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.write_bytes(b"something")
    write_atomic(target, b"")
    assert target.read_bytes() == b""


def test_failure_while_writing_keeps_old_content(tmp_path: Path) -> None:
    """A real failure after the temp file exists: writing a str to a binary file."""
    target = tmp_path / "config.toml"
    target.write_bytes(b"old\n")
    target.chmod(0o600)
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_failed_fsync_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error at fsync (a failing disk, which cannot be produced here, so it is injected)."""
    target = tmp_path / "config.toml"
    target.write_bytes(b"old\n")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(target, b"new\n")
    monkeypatch.undo()
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_interrupt_before_rename_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between writing the temp file and renaming it (injected at os.replace)."""
    target = tmp_path / "config.toml"
    target.write_bytes(b"old\n")

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new\n")
    monkeypatch.undo()
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_missing_directory_raises_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "config.toml", b"x")
    assert list(tmp_path.iterdir()) == []


def test_target_that_is_a_directory_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.mkdir()
    (target / "inside").write_text("keep")
    with pytest.raises(IsADirectoryError):
        write_atomic(target, b"x")
    assert (target / "inside").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    versions = [bytes([65 + i]) * 200_000 for i in range(8)]
    write_atomic(target, versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def reader() -> None:
        while not stop.is_set():
            seen.append(target.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in versions * 3:
            write_atomic(target, version)
    finally:
        stop.set()
        thread.join()
    assert seen
    assert all(data in versions for data in seen)


def test_locked_serialises_across_file_descriptions(tmp_path: Path) -> None:
    lock = tmp_path / "state.lock"
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with locked(lock):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    def waiter() -> None:
        with locked(lock):
            order.append("second in")

    first = threading.Thread(target=holder)
    first.start()
    assert inside.wait(5)
    second = threading.Thread(target=waiter)
    second.start()
    second.join(0.3)
    assert second.is_alive(), "the second locker got in while the first held the lock"
    release.set()
    first.join(5)
    second.join(5)
    assert order == ["first in", "first out", "second in"]
    assert mode(lock) == 0o600
