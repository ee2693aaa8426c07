"""`sudo blindkey elevate` for real: an agent user made here, the sudoers drop-in of
sudoers_rule() checked by `visudo -cf`, the wheel-installed blindkey run through
`su AGENT -c 'sudo ...'`. A wrong code, a reused code, an expired window and `end` all
refuse; every command run is an audit record with argv and exit status.

The window's expiry is reached by writing the window's record with a past expiry as root
(the clock of a process under sudo cannot be injected)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyotp
import pytest

from blindkey.broker.approvals.service import Approvals
from blindkey.broker.approvals.store import ApprovalsFile
from blindkey.broker.elevate import sudoers_rule
from blindkey.broker.vault import ensure_key
from blindkey.config.home import init_config
from blindkey.config.paths import Paths, resolve_paths
from tests.approvals_helpers import Approver, audit_events, seed_of
from tests.staging import Installed
from tests.users import system_users

pytestmark = pytest.mark.timeout(300)
AGENT = "bk-elevate"


@dataclass
class Sudo:
    blindkey: str
    root_home: Paths  # the blindkey home of the root process sudo starts
    approver: Approver

    def run(self, command: str, env: str = "") -> subprocess.CompletedProcess[str]:
        """`command` (after `sudo -n BLINDKEY`) as the agent's user, through su and sudo."""
        line = f"{env} sudo -n {shlex.quote(self.blindkey)} {command}"
        return subprocess.run(
            ["su", AGENT, "-s", "/bin/sh", "-c", line],
            capture_output=True, text=True, timeout=60, check=False, cwd="/",
        )  # fmt: skip


def _drop_in(text: str, name: str) -> Path:
    path = Path("/etc/sudoers.d") / name
    staged = Path(tempfile.mkdtemp()) / name
    staged.write_text(text)
    staged.chmod(0o440)
    check = subprocess.run(["visudo", "-cf", str(staged)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.move(staged, path)
    return path


@pytest.fixture
def sudo(installed: Installed) -> Iterator[Sudo]:
    base = Path(tempfile.mkdtemp(prefix="bk-elevate-", dir="/tmp"))
    base.chmod(0o700)  # root's home for the test: the agent may not even look
    home = resolve_paths({"BLINDKEY_HOME": str(base / "root-home")})
    init_config(home)
    ensure_key(home)
    approvals = Approvals(home)
    approver = Approver("default", seed_of(approvals.enroll(None, None, None)["otpauth_uri"]))
    approvals.confirm(None, approver.code())
    rule = sudoers_rule(AGENT, Path(installed.blindkey))
    # Test-only: root's blindkey home is a temporary one, not this machine's /root. The
    # rule itself resets the environment (test_the_callers_home_is_not_roots shows it).
    test_home = f'Defaults!{installed.blindkey} env_keep += "BLINDKEY_HOME"\n'
    with system_users((AGENT, ())):
        drop_in = _drop_in(rule + test_home, f"zz-blindkey-test-{int(time.time())}")
        try:
            yield Sudo(installed.blindkey, home, approver)
        finally:
            drop_in.unlink()
            shutil.rmtree(base, ignore_errors=True)


def _env(sudo: Sudo) -> str:
    return f"BLINDKEY_HOME={shlex.quote(str(sudo.root_home.config_dir))}"


def test_rule_passes_visudo_and_names_only_elevate(installed: Installed) -> None:
    rule = sudoers_rule(AGENT, Path(installed.blindkey))
    assert f"{AGENT} ALL=(root) NOPASSWD: {installed.blindkey} elevate *" in rule
    staged = Path(tempfile.mkdtemp()) / "rule"
    staged.write_text(rule)
    assert subprocess.run(["visudo", "-cf", str(staged)], capture_output=True).returncode == 0
    shutil.rmtree(staged.parent)
    for user, path in (("bad user", installed.blindkey), (AGENT, "relative/blindkey"),
                       (AGENT, "/tmp/with space/blindkey")):  # fmt: skip
        with pytest.raises(Exception, match="sudoers"):
            sudoers_rule(user, Path(path))


def test_code_opens_a_window_that_session_reuses_and_end_closes(sudo: Sudo) -> None:
    env = _env(sudo)
    wrong = sudo.run("elevate 000000 -- /usr/bin/id -u", env)
    assert wrong.returncode == 4 and "wrong code" in wrong.stderr, wrong.stderr
    refused = sudo.run("elevate session -- /usr/bin/id -u", env)
    assert refused.returncode == 1 and "no elevated window is open" in refused.stderr

    code = sudo.approver.code()
    opened = sudo.run(f"elevate {code} -- /usr/bin/id -u", env)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip() == "0"  # ran as root
    replay = sudo.run(f"elevate {code} -- /usr/bin/id -u", env)
    assert replay.returncode == 4 and "already used" in replay.stderr

    inside = sudo.run("elevate session -- /bin/sh -c 'exit 3'", env)
    assert inside.returncode == 3
    status = sudo.run("elevate status --json", env)
    assert status.returncode == 0 and json.loads(status.stdout)["open"] is True

    ended = sudo.run("elevate end", env)
    assert ended.returncode == 0, ended.stderr
    after = sudo.run("elevate session -- /usr/bin/id -u", env)
    assert after.returncode == 1 and "no elevated window" in after.stderr

    records = audit_events(sudo.root_home.audit_dir, "elevate")
    runs = [r for r in records if "argv" in r]
    assert [(r["argv"], r["exit_status"], r["user"]) for r in runs] == [
        (["/usr/bin/id", "-u"], 0, AGENT),
        (["/bin/sh", "-c", "exit 3"], 3, AGENT),
    ]
    assert [r.get("window") for r in records if "window" in r] == ["open", "end"]
    refusals = audit_events(sudo.root_home.audit_dir, "code_refused")
    assert [r["reason"] for r in refusals] == ["code_wrong", "code_reused"]


def test_an_expired_window_refuses(sudo: Sudo) -> None:
    env = _env(sudo)
    assert sudo.run(f"elevate {sudo.approver.code()} -- /bin/true", env).returncode == 0
    with ApprovalsFile.of(sudo.root_home).editing() as state:
        state.elevate[AGENT] = replace(state.elevate[AGENT], expires=time.time() - 1)
    expired = sudo.run("elevate session -- /usr/bin/id -u", env)
    assert expired.returncode == 1 and "no elevated window" in expired.stderr
    assert "0" not in expired.stdout


def test_the_agent_may_run_nothing_else_as_root(sudo: Sudo) -> None:
    for command in ("totp enroll --approver mine", "grants list", "--version"):
        denied = sudo.run(command, _env(sudo))
        assert denied.returncode == 1 and "sudo" in denied.stderr, denied.stderr
    # Nor keep its environment beyond what the rule names.
    kept = subprocess.run(
        ["su", AGENT, "-s", "/bin/sh", "-c",
         f"sudo -n -E {shlex.quote(sudo.blindkey)} elevate status"],
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip
    assert kept.returncode == 1 and "preserve the environment" in kept.stderr, kept.stderr


def test_the_callers_home_is_not_roots(installed: Installed, tmp_path: Path) -> None:
    """With the rule alone, BLINDKEY_HOME of the caller does not reach root: an approver the
    agent enrolled in a home of its own opens nothing."""
    with system_users((AGENT, ())):
        drop_in = _drop_in(sudoers_rule(AGENT, Path(installed.blindkey)), "zz-blindkey-rule")
        try:
            own = Path(tempfile.mkdtemp(prefix="bk-agent-home-", dir="/tmp"))
            shutil.chown(own, AGENT, AGENT)
            home = own / "home"
            enrolled = subprocess.run(
                ["su", AGENT, "-s", "/bin/sh", "-c",
                 f"BLINDKEY_HOME={home} {installed.blindkey} totp enroll --json"],
                capture_output=True, text=True, timeout=60, check=True, cwd="/",
            )  # fmt: skip
            seed = seed_of(json.loads(enrolled.stdout)["otpauth_uri"])
            subprocess.run(
                ["su", AGENT, "-s", "/bin/sh", "-c",
                 f"BLINDKEY_HOME={home} {installed.blindkey} totp confirm "
                 f"--code {pyotp.TOTP(seed).now()}"],
                capture_output=True, text=True, timeout=60, check=True, cwd="/",
            )  # fmt: skip
            code = pyotp.TOTP(seed).at(time.time() + 30)
            attempt = subprocess.run(
                ["su", AGENT, "-s", "/bin/sh", "-c",
                 f"BLINDKEY_HOME={home} sudo -n {installed.blindkey} elevate {code} -- "
                 "/usr/bin/id -u"],
                capture_output=True, text=True, timeout=60, check=False, cwd="/",
            )  # fmt: skip
            assert attempt.returncode in (1, 4), attempt.stderr
            assert attempt.stdout.strip() != "0"
        finally:
            drop_in.unlink()
            shutil.rmtree(own, ignore_errors=True)
