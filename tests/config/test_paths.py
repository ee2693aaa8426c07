"""Where files live: BLINDKEY_HOME, else XDG; private directories; socket paths that fit."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths, ensure_dir, ensure_dirs, resolve_paths

pytestmark = pytest.mark.skipif(sys.platform == "darwin", reason="XDG layout is the Linux one")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_blindkey_home_puts_everything_under_it(tmp_path: Path) -> None:
    root = tmp_path / "bk"
    paths = resolve_paths(
        {
            "BLINDKEY_HOME": str(root),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
            "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
            "XDG_RUNTIME_DIR": str(tmp_path / "xdg-run"),
            "HOME": str(tmp_path / "user"),
        }
    )
    assert paths.config_file == root / "config.toml"
    for path in (
        paths.config_file,
        paths.vault_file,
        paths.vault_key,
        paths.agents_file,
        paths.lock_file,
        paths.audit_dir,
        paths.proxy_log,
        paths.pid_file,
        paths.status_file,
        paths.broker_socket,
    ):
        assert path.is_relative_to(root), path
    assert paths.audit_dir == root / "audit"


def test_relative_blindkey_home_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = resolve_paths({"BLINDKEY_HOME": "rel/home"})
    assert paths.config_dir == tmp_path / "rel" / "home"
    assert paths.config_dir.is_absolute()


def test_tilde_in_blindkey_home_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_paths({"BLINDKEY_HOME": "~/bk"}).config_dir == tmp_path / "bk"


def test_xdg_directories_when_home_unset(tmp_path: Path) -> None:
    paths = resolve_paths(
        {
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "HOME": str(tmp_path / "user"),
        }
    )
    assert paths.config_file == tmp_path / "cfg" / "blindkey" / "config.toml"
    assert paths.vault_file == tmp_path / "state" / "blindkey" / "vault.bin"
    assert paths.vault_key == tmp_path / "state" / "blindkey" / "vault.key"
    assert paths.audit_dir == tmp_path / "state" / "blindkey" / "audit"
    assert paths.pid_file == tmp_path / "run" / "blindkey" / "proxy.pid"
    assert paths.broker_socket == tmp_path / "run" / "blindkey" / "broker.sock"


def test_empty_blindkey_home_counts_as_unset(tmp_path: Path) -> None:
    paths = resolve_paths({"BLINDKEY_HOME": "", "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert paths.config_dir == tmp_path / "cfg" / "blindkey"


def test_xdg_fallbacks_under_home(tmp_path: Path) -> None:
    user = tmp_path / "user"
    paths = resolve_paths({"HOME": str(user)})
    assert paths.config_dir == user / ".config" / "blindkey"
    assert paths.state_dir == user / ".local" / "state" / "blindkey"
    # No XDG_RUNTIME_DIR (a cron job, a container): sockets go under the state directory.
    assert paths.runtime_dir == user / ".local" / "state" / "blindkey" / "run"


def test_each_xdg_variable_is_used_independently(tmp_path: Path) -> None:
    user = tmp_path / "user"
    paths = resolve_paths({"HOME": str(user), "XDG_STATE_HOME": str(tmp_path / "st")})
    assert paths.config_dir == user / ".config" / "blindkey"
    assert paths.state_dir == tmp_path / "st" / "blindkey"
    assert paths.runtime_dir == tmp_path / "st" / "blindkey" / "run"


def test_ensure_dirs_creates_private_directories(tmp_path: Path) -> None:
    paths = resolve_paths({"BLINDKEY_HOME": str(tmp_path / "a" / "b")})
    ensure_dirs(paths)
    for directory in paths.all_dirs():
        assert directory.is_dir()
        assert mode(directory) == 0o700, directory


def test_ensure_dirs_with_xdg_layout(tmp_path: Path) -> None:
    paths = resolve_paths(
        {
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        }
    )
    ensure_dirs(paths)
    for directory in (paths.config_dir, paths.state_dir, paths.audit_dir, paths.runtime_dir):
        assert mode(directory) == 0o700, directory


def test_ensure_dirs_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ensure_dirs(resolve_paths({"BLINDKEY_HOME": str(tmp_path / "bk")}))
    finally:
        os.umask(old)
    assert mode(tmp_path / "bk") == 0o700
    assert mode(tmp_path / "bk" / "audit") == 0o700


def test_ensure_dir_tightens_an_open_directory(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    (loose / "keep").write_text("x")
    ensure_dir(loose)
    assert mode(loose) == 0o700
    assert (loose / "keep").read_text() == "x"


def test_ensure_dirs_tightens_existing_home(tmp_path: Path) -> None:
    root = tmp_path / "bk"
    (root / "audit").mkdir(parents=True)
    root.chmod(0o755)
    (root / "audit").chmod(0o777)
    ensure_dirs(resolve_paths({"BLINDKEY_HOME": str(root)}))
    assert mode(root) == 0o700
    assert mode(root / "audit") == 0o700


def test_ensure_dir_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "d"
    ensure_dir(target)
    ensure_dir(target)
    assert mode(target) == 0o700


def test_short_home_keeps_socket_in_runtime_dir(tmp_path: Path) -> None:
    paths = Paths(config_dir=Path("/h"), state_dir=Path("/h"), runtime_dir=Path("/h/run"))
    assert paths.broker_socket == Path("/h/run/broker.sock")


@pytest.mark.parametrize("depth", [120, 400, 2000])
def test_deep_home_yields_a_socket_path_that_fits(tmp_path: Path, depth: int) -> None:
    deep = tmp_path / ("d" * 50)
    while len(str(deep)) < depth:
        deep = deep / ("d" * 50)
    paths = resolve_paths({"BLINDKEY_HOME": str(deep)})
    socket_path = paths.broker_socket
    assert len(os.fsencode(socket_path)) < 100, socket_path
    assert socket_path.name == "broker.sock"
    # The short path is stable per home, and distinct homes do not share one.
    assert resolve_paths({"BLINDKEY_HOME": str(deep)}).broker_socket == socket_path
    other = resolve_paths({"BLINDKEY_HOME": str(deep / "other")}).broker_socket
    assert other != socket_path


def test_deep_home_socket_directory_is_created_private(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(["x" * 40] * 4))
    paths = resolve_paths({"BLINDKEY_HOME": str(deep)})
    assert not paths.broker_socket.is_relative_to(deep)
    try:
        ensure_dirs(paths)
        assert paths.broker_socket.parent in paths.all_dirs()
        assert mode(paths.broker_socket.parent) == 0o700
    finally:
        paths.broker_socket.parent.rmdir()


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "socketdir"
    link.symlink_to(target)
    with pytest.raises(BlindkeyError, match="not a directory owned by you"):
        ensure_dir(link)


def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "theirs"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)  # nobody; the tests run as root, who may give it away
    with pytest.raises(BlindkeyError, match="not a directory owned by you"):
        ensure_dir(other)
