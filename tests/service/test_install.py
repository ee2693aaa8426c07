"""`blindkey service install|uninstall|status` where no service manager runs (this machine,
CI): install writes the files and prints the commands that would start them, --dry-run
writes nothing, bad input changes nothing; the sudoers drop-in lands only if visudo
accepts it; `service broker` speaks the notify protocol."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.paths import Paths
from blindkey.service import install as service
from blindkey.service import system as service_system
from blindkey.service.units import SystemLayout, blindkey_path
from tests.conftest import ROOT

Run = Callable[..., subprocess.CompletedProcess[str]]
BLINDKEY = blindkey_path(executable=sys.executable)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "user"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    # A runtime directory without a user manager's socket: even on a machine where systemd
    # runs, `systemctl --user` is not reached and the user's own services are left alone.
    runtime = tmp_path / "xdg"
    return {**env, "HOME": str(home), "BLINDKEY_HOME": str(home / "bk"),
            "XDG_RUNTIME_DIR": str(runtime)}  # fmt: skip


@pytest.fixture
def run(user_env: dict[str, str]) -> Run:
    def blindkey(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BLINDKEY), *args],
            env=user_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return blindkey


def test_dry_run_prints_the_unit_and_writes_nothing(run: Run, user_env: dict[str, str]) -> None:
    home = Path(user_env["HOME"])
    result = run("service", "install", "--dry-run")
    assert result.returncode == 0, result.stderr
    unit = home / ".config" / "systemd" / "user" / "blindkey.service"
    assert f"# {unit} (mode 0644)" in result.stdout
    assert f"ExecStart={BLINDKEY} proxy start --foreground" in result.stdout
    assert "systemctl --user enable --now blindkey.service" in result.stdout
    assert "loginctl enable-linger" in result.stdout
    assert tree(home) == []  # not even the blindkey home


def test_install_writes_the_unit_prints_how_to_start_and_uninstall_removes_it(
    run: Run, user_env: dict[str, str]
) -> None:
    home = Path(user_env["HOME"])
    unit = home / ".config" / "systemd" / "user" / "blindkey.service"
    assert run("service", "status").returncode == service.EXIT_NOT_INSTALLED
    installed = run("service", "install")
    assert installed.returncode == 0, installed.stderr
    assert "systemd --user does not run here; to start blindkey, run:" in installed.stdout
    assert "  systemctl --user enable --now blindkey.service" in installed.stdout
    assert f"ExecStart={BLINDKEY} proxy start --foreground\n" in unit.read_text()
    assert f"Environment=BLINDKEY_HOME={home / 'bk'}\n" in unit.read_text()
    # The home the unit pins exists before anything starts it.
    assert (home / "bk" / "config.toml").is_file() and (home / "bk" / "run").is_dir()
    status = run("service", "status", "--json")
    assert status.returncode == 0
    info = json.loads(status.stdout)
    assert info["installed"] and info["program_is_this_blindkey"]
    assert info["files"] == [str(unit)] and info["manager_running"] is False
    assert run("service", "uninstall").returncode == 0
    assert not unit.exists()
    assert run("service", "status").returncode == service.EXIT_NOT_INSTALLED


def test_a_bad_elevate_user_is_refused_and_writes_nothing(
    run: Run, user_env: dict[str, str]
) -> None:
    result = run("service", "install", "--elevate-user", "bad user; ALL")
    assert result.returncode == 2 and "not a user name" in result.stderr
    assert tree(Path(user_env["HOME"])) == []


def test_the_system_dry_run_shows_both_units_and_the_users(run: Run) -> None:
    units = Path("/etc/systemd/system")
    before = sorted(units.glob("blindkey*")) if units.exists() else []
    result = run("service", "install", "--system", "--dry-run")
    # The preview fails as the install would where the units cannot see this blindkey
    # (a python under /root or /home): the units are shown all the same.
    if service_system.hidden_program(BLINDKEY) is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1 and "the real install would refuse" in result.stderr
    assert "# /etc/systemd/system/blindkey-broker.service (mode 0644)" in result.stdout
    assert "# /etc/systemd/system/blindkey.service (mode 0644)" in result.stdout
    assert "create the users blindkey-broker and blindkey" in result.stdout
    assert "systemctl enable --now blindkey-broker.service blindkey.service" in result.stdout
    assert (sorted(units.glob("blindkey*")) if units.exists() else []) == before


def test_on_macos_a_launch_agent_is_written(
    home: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(system=False, elevate_user=None, dry_run=False, json=False)
    assert service.install(home, args, "darwin") == 0
    agent = tmp_path / "Library" / "LaunchAgents" / "dev.blindkey.proxy.plist"
    assert agent.is_file()
    out = capsys.readouterr().out
    assert f"launchctl bootstrap gui/{os.getuid()} {agent}" in out
    assert service.status(home, args, "darwin") == 0
    assert service.describe(home, "darwin")["program"] == str(BLINDKEY)
    assert service.uninstall(home, args, "darwin") == 0
    assert not agent.exists()
    with pytest.raises(UsageError, match="not win32"):
        service.install(home, args, "win32")


def test_the_sudoers_drop_in_lands_after_visudo_checks_it(tmp_path: Path) -> None:
    target = tmp_path / "sudoers.d" / "blindkey-elevate"
    service_system.install_sudoers("alice", BLINDKEY, dry_run=False, target=target)
    assert target.stat().st_mode & 0o777 == 0o440
    assert f"alice ALL=(root) NOPASSWD: {BLINDKEY} elevate *" in target.read_text()
    assert subprocess.run(["visudo", "-cf", str(target)], capture_output=True).returncode == 0


def test_a_drop_in_visudo_refuses_never_lands(tmp_path: Path) -> None:
    target = tmp_path / "sudoers.d" / "blindkey-elevate"
    target.parent.mkdir()
    target.write_text("# the previous, valid file\n")
    with pytest.raises(BlindkeyError, match="visudo refused"):
        service_system.land_checked("alice ALL=(root NOPASSWD\n", target)
    assert target.read_text() == "# the previous, valid file\n"
    assert os.listdir(target.parent) == ["blindkey-elevate"]


def test_elevate_refuses_a_blindkey_another_user_could_change(tmp_path: Path) -> None:
    writable = tmp_path / "shared"
    writable.mkdir()
    fake = writable / "blindkey"
    shutil.copy(BLINDKEY, fake)
    os.chown(writable, 65534, 65534)  # nobody could replace what root would run
    target = tmp_path / "blindkey-elevate"
    with pytest.raises(BlindkeyError, match="can be changed by a user other than root"):
        service_system.install_sudoers("alice", fake, dry_run=False, target=target)
    assert not target.exists()


def test_service_broker_notifies_ready_then_stopping(home: Paths, tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    sock = tmp_path / "b.sock"
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    process = subprocess.Popen(
        [str(BLINDKEY), "service", "broker", "--socket", str(sock)], env=env, cwd=ROOT
    )
    try:
        ready = notify.recv(4096).decode()
        assert ready.startswith("READY=1") and f"MAINPID={process.pid}" in ready
        # READY means listening: a connection is accepted at once.
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))
        assert notify.recv(4096) == b"WATCHDOG=1"
        process.send_signal(signal.SIGTERM)
        messages = [notify.recv(4096).decode()]
        while messages[-1] != "STOPPING=1":
            messages.append(notify.recv(4096).decode())
        assert set(messages[:-1]) <= {"WATCHDOG=1"}
        assert process.wait(timeout=20) == 0
    finally:
        notify.close()
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("place", ["/tmp/venv/bin/blindkey", "/home/ada/.local/bin/blindkey"])
def test_a_system_install_of_a_blindkey_its_units_cannot_see_changes_nothing(
    place: str, tmp_path: Path
) -> None:
    layout = SystemLayout(
        broker_user="bk-never-broker", proxy_user="bk-never-proxy", unit_dir=tmp_path / "units"
    )
    with pytest.raises(BlindkeyError, match="which the hardened units hide"):
        service_system.install_system(Path(place), layout, dry_run=False)
    assert not (tmp_path / "units").exists() and not layout.broker_home.exists()
    for name in (layout.broker_user, layout.proxy_user):
        with pytest.raises(KeyError):
            pwd.getpwnam(name)


def test_an_elevate_rule_that_would_be_refused_stops_the_install_before_it_writes(
    home: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writable = tmp_path / "shared"
    writable.mkdir()
    fake = writable / "blindkey"
    shutil.copy(BLINDKEY, fake)
    os.chown(writable, 65534, 65534)
    monkeypatch.setattr(sys, "argv", [str(fake), "service", "install"])
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    args = argparse.Namespace(system=False, elevate_user="alice", dry_run=False, json=False)
    with pytest.raises(BlindkeyError, match="can be changed by a user other than root"):
        service.install(home, args, "linux")
    assert not (tmp_path / "user").exists()


# Issue 23: a --dry-run said nothing of the refusal the real install would make.


@pytest.mark.parametrize("place", ["/tmp/venv/bin/blindkey", "/home/ada/.local/bin/blindkey"])
def test_a_system_dry_run_reports_the_refusal_the_install_would_make(
    place: str, tmp_path: Path
) -> None:
    layout = SystemLayout(unit_dir=tmp_path / "units")
    with pytest.raises(BlindkeyError, match=r"would refuse: .*hardened units hide.*under /opt"):
        service_system.install_system(Path(place), layout, dry_run=True)
    assert not (tmp_path / "units").exists()


def test_an_elevate_dry_run_shows_no_rule_the_install_would_refuse(
    home: Paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    writable = tmp_path / "shared"
    writable.mkdir()
    fake = writable / "blindkey"
    shutil.copy(BLINDKEY, fake)
    os.chown(writable, 65534, 65534)
    monkeypatch.setattr(sys, "argv", [str(fake), "service", "install"])
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    args = argparse.Namespace(system=False, elevate_user="alice", dry_run=True, json=False)
    with pytest.raises(BlindkeyError, match=r"would refuse the sudoers rule.*root-owned"):
        service.install(home, args, "linux")
    assert "alice" not in capsys.readouterr().out
    assert not (tmp_path / "user").exists()
