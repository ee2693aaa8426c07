"""`service install --system`, then the real units under a real systemd: systemd 252 runs
as PID 1 of its own PID, mount, network, UTS, IPC and cgroup namespaces (this machine's
PID 1 is not systemd), with only blindkey's units and empty stand-ins for the boot
targets on its unit path, so it starts nothing else and the host's /run is left alone.

Both units come up Type=notify under their full hardening (ProtectSystem=strict,
MemoryDenyWriteExecute, SystemCallFilter, ...); `systemctl reload` is the proxy's reload;
an injected call is redacted; a proxy whose loop is frozen is killed by the watchdog and
restarted; `systemctl stop` ends it cleanly.

The install is made with the real names (users blindkey and blindkey-broker, their homes
in /var/lib, units in /etc/systemd/system), so the test refuses to run over an install it
did not make, and removes what it made afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.staging import Installed, install
from tests.users import machine_lock, system_users

pytestmark = pytest.mark.timeout(300)
SECRET = "ghp_systemdUnitValue0123456789XYZ"
UNITS = ("blindkey-broker.service", "blindkey.service")
HOMES = (Path("/var/lib/blindkey-broker"), Path("/var/lib/blindkey"))
USER = "bk-service-user"
STAND_INS = ("default", "sysinit", "basic", "shutdown", "multi-user", "network-online",
             "network", "sockets", "timers", "paths", "slices", "local-fs")  # fmt: skip
BOOT = """
set -e
mount -t proc proc /proc
mount -t tmpfs -o mode=755 tmpfs /run
exec env -i container=blindkey-test SYSTEMD_UNIT_PATH="$1" PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --log-target=console --log-level=warning \
  --default-standard-output=inherit --default-standard-error=inherit --unit=default.target
"""


@dataclass
class Booted:
    pid: int
    blindkey: str

    def inside(self, *args: str, check: bool = True, stdin: str = "") -> str:
        done = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-n", "-p", *args],
            input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0 or not check, (args, done.stdout, done.stderr)
        return done.stdout

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.inside("systemctl", *args, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).strip()

    def cli(self, user: str, home: Path, *args: str, stdin: str = "") -> str:
        env = ["env", "-i", f"BLINDKEY_HOME={home}", "PATH=/usr/bin:/bin"]
        return self.inside("runuser", "-u", user, "--", *env, self.blindkey, *args, stdin=stdin)


@pytest.fixture(scope="module")
def opt_install() -> Iterator[Installed]:
    """The units hide /tmp, /home and /root: blindkey installed where a system-wide one is."""
    base = Path(tempfile.mkdtemp(prefix="blindkey-service-", dir="/opt"))
    base.chmod(0o755)
    try:
        yield install(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def system_install(opt_install: Installed) -> Iterator[Installed]:
    assert os.geteuid() == 0, "this test creates users and boots systemd: run it as root"
    with machine_lock():  # another run's system install must not meet this one
        yield from _system_install(opt_install)


def _system_install(opt_install: Installed) -> Iterator[Installed]:
    existing = [p for p in (*HOMES, *(Path("/etc/systemd/system") / u for u in UNITS))
                if p.exists()]  # fmt: skip
    assert not existing, f"a blindkey system install exists ({existing}); not replacing it"
    users_before = {name for name in ("blindkey", "blindkey-broker") if _user_exists(name)}
    try:
        done = subprocess.run(
            [opt_install.blindkey, "service", "install", "--system"],
            capture_output=True, text=True, timeout=120, cwd="/", check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "systemd does not run here; to start blindkey, run:" in done.stdout
        yield opt_install
    finally:
        subprocess.run([opt_install.blindkey, "service", "uninstall", "--system"],
                       capture_output=True, cwd="/", check=False)  # fmt: skip
        for name in ("blindkey", "blindkey-broker"):
            if name not in users_before:
                subprocess.run(["userdel", name], capture_output=True, check=False)
                subprocess.run(["groupdel", name], capture_output=True, check=False)
        for home in HOMES:
            shutil.rmtree(home, ignore_errors=True)


def stand_ins(directory: Path, names: tuple[str, ...]) -> Path:
    directory.mkdir(parents=True)
    for name in names:
        (directory / f"{name}.target").write_text(f"[Unit]\nDescription={name}\n")
    return directory


@contextlib.contextmanager
def boot(units: Path, log_file: Path, blindkey: str) -> Iterator[Booted]:
    """systemd as PID 1 of new namespaces, with `units` as its whole unit path."""
    cgroups_before = _cgroups()
    log = log_file.open("wb")
    unshare = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc", "--cgroup",
         "--propagation", "private", "sh", "-c", BOOT, "boot", str(units)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        booted = Booted(_child_of(unshare.pid), blindkey)
        deadline = time.monotonic() + 30
        while booted.systemctl("is-system-running", check=False).strip() != "running":
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        yield booted
    finally:
        # SIGKILL to the namespace's PID 1 ends every process in it.
        with contextlib.suppress(ProcessLookupError, AssertionError):
            os.kill(_child_of(unshare.pid), signal.SIGKILL)
        unshare.wait(timeout=30)
        log.close()
        _remove_cgroups(cgroups_before)


@pytest.fixture
def booted(system_install: Installed, tmp_path: Path) -> Iterator[Booted]:
    units = stand_ins(tmp_path / "units", STAND_INS)
    for unit in UNITS:
        shutil.copy(Path("/etc/systemd/system") / unit, units / unit)
    # Only for the test: output where it can be read, and a watchdog that bites in 2 s.
    drop_in = units / "blindkey.service.d"
    drop_in.mkdir()
    (drop_in / "test.conf").write_text(
        "[Service]\nStandardOutput=append:/var/lib/blindkey/service.log\n"
        "StandardError=append:/var/lib/blindkey/service.log\nWatchdogSec=2\n"
    )
    with boot(units, tmp_path / "systemd.log", system_install.blindkey) as booted:
        yield booted


def test_the_installed_units_run_hardened_under_systemd(booted: Booted) -> None:
    broker_home, proxy_home = HOMES
    booted.systemctl("start", *UNITS)  # returns once both sent READY=1
    for unit in UNITS:
        assert booted.show(unit, "ActiveState") == "active"
    assert booted.show("blindkey.service", "StatusText") == "listening on 127.0.0.1:8765"
    assert booted.show("blindkey-broker.service", "StatusText").startswith("serving /run/")

    token = json.loads(booted.cli("blindkey-broker", broker_home, "agent", "add", "a", "--json"))
    upstream = subprocess.Popen(
        ["nsenter", "-t", str(booted.pid), "-n", sys.executable, "-m", "tests.upstream"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline().split()[1])
        # A binding names scheme and port, as an allowlist entry does.
        booted.cli("blindkey-broker", broker_home, "secrets", "set", "GH", "--host",
                   f"http://127.0.0.1:{port}", stdin=SECRET)  # fmt: skip
        booted.cli("blindkey", proxy_home, "allowlist", "add", f"http://127.0.0.1:{port}")
        booted.systemctl("reload", "blindkey.service")  # `proxy reload`: waits for it
        answer = booted.inside(
            "curl", "-sS", "http://127.0.0.1:8765/proxy",
            "-H", f"X-AS-Agent-Token: {token['token']}",
            "-H", f"X-AS-Target-URL: http://127.0.0.1:{port}/reflect",
            "-H", "X-AS-Inject-Bearer: GH",
        )  # fmt: skip
        assert "[REDACTED:GH]" in answer and SECRET not in answer
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
        if upstream.stdout is not None:
            upstream.stdout.close()

    # A frozen event loop stops the WATCHDOG=1 pings: systemd kills and restarts it.
    frozen = booted.show("blindkey.service", "MainPID")
    booted.inside("kill", "-STOP", frozen)
    deadline = time.monotonic() + 20
    while booted.show("blindkey.service", "NRestarts") != "1":
        assert time.monotonic() < deadline, "the watchdog did not restart the frozen proxy"
        time.sleep(0.1)
    booted.systemctl("start", "blindkey.service")  # waits for READY=1 of the new one
    assert booted.show("blindkey.service", "MainPID") != frozen
    assert booted.inside("curl", "-sS", "http://127.0.0.1:8765/health").strip() == (
        '{"status": "ok"}'
    )

    booted.systemctl("stop", *UNITS)
    for unit in UNITS:
        assert booted.show(unit, "ActiveState") == "inactive"
        assert booted.show(unit, "Result") == "success"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _child_of(pid: int) -> int:
    """unshare --fork's child: PID 1 of the new namespace."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children")
        with contextlib.suppress(FileNotFoundError):
            found = children.read_text().split()
            if found:
                return int(found[0])
        time.sleep(0.02)
    raise AssertionError("unshare started no child")


def _cgroups() -> set[Path]:
    return {d for d in Path("/sys/fs/cgroup").glob("*/*") if d.is_dir()}


def _remove_cgroups(before: set[Path]) -> None:
    """The cgroups the namespace's systemd made (init.scope, system.slice), now empty."""
    for made in _cgroups() - before:
        inner = [d for d in made.rglob("*") if d.is_dir()]
        for directory in [*sorted(inner, key=lambda d: -len(d.parts)), made]:
            with contextlib.suppress(OSError):
                directory.rmdir()


def test_the_user_unit_runs_under_a_users_manager(opt_install: Installed, tmp_path: Path) -> None:
    """`service install` by an ordinary user with XDG directories, then `systemctl --user
    enable --now` against that user's own, unprivileged manager: notify, reload, and the
    CLI and the service sharing one home."""
    home = Path(tempfile.mkdtemp(prefix="blindkey-user-", dir="/opt"))
    with system_users((USER, ())):
        entry = pwd.getpwnam(USER)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        runtime = f"/run/user/{entry.pw_uid}"
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": runtime}
        try:
            done = subprocess.run(
                [opt_install.blindkey, "service", "install"],
                env={**env, "XDG_RUNTIME_DIR": str(home / "xdg")}, user=USER, group=USER,
                extra_groups=[], cwd="/", capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert f"sudo loginctl enable-linger {USER}" in done.stdout
            # Readable by the user's manager (pytest's own directory is root's alone).
            user_units = stand_ins(home / "stand-ins", ("default", "basic", "shutdown", "exit",
                                                        "sockets", "timers", "paths"))  # fmt: skip
            (user_units / "systemd-exit.service").write_text(
                "[Service]\nType=oneshot\nExecStart=/bin/true\n"
            )
            system_units = stand_ins(tmp_path / "units", STAND_INS)
            with boot(system_units, tmp_path / "systemd.log", opt_install.blindkey) as booted:
                booted.inside("install", "-d", "-m", "0700", "-o", USER, "-g", USER, runtime)
                unit_path = f"{user_units}:{home}/.config/systemd/user"
                booted.inside(
                    "systemd-run", "--unit=user-manager", "-p", "Type=notify",
                    "-p", "Delegate=yes", "-p", f"User={USER}",
                    *(f"--setenv={k}={v}" for k, v in env.items()),
                    f"--setenv=SYSTEMD_UNIT_PATH={unit_path}", "/lib/systemd/systemd", "--user",
                )  # fmt: skip
                as_user = [
                    "runuser",
                    "-u",
                    USER,
                    "--",
                    "env",
                    *(f"{k}={v}" for k, v in env.items()),
                ]
                user = [*as_user, "systemctl", "--user"]
                booted.inside(*user, "enable", "--now", "blindkey.service")
                shown = booted.inside(*user, "show", "-p", "ActiveState,StatusText",
                                      "blindkey.service")  # fmt: skip
                assert "ActiveState=active" in shown and "listening on 127.0.0.1:8765" in shown
                booted.inside(*user, "reload", "blindkey.service")
                status = booted.inside(*as_user, opt_install.blindkey, "proxy", "status", "--json")
                assert json.loads(status)["healthy"] is True
                booted.inside(*user, "disable", "--now", "blindkey.service")
                shown = booted.inside(*user, "show", "-p", "ActiveState,Result", "blindkey.service")
                assert "ActiveState=inactive" in shown and "Result=success" in shown
        finally:
            shutil.rmtree(home, ignore_errors=True)
