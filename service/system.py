"""`service install --system` (root): the broker and the proxy as two users of their own,
their homes and configuration, the hardened units; and the sudoers drop-in for elevate."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import tomlkit

from blindkey.config.console import say
from blindkey.config.edit import edit_config, toml_table
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import resolve_paths
from blindkey.service.plan import Artifact, Plan, remove, run_checked, systemd_runs
from blindkey.service.units import BROKER_UNIT, PROXY_UNIT, SystemLayout, broker_unit, proxy_unit

SUDOERS_FILE = Path("/etc/sudoers.d/blindkey-elevate")
# ProtectHome=yes and PrivateTmp=yes hide these from both services: a blindkey under
# them cannot start.
_HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))  # noqa: S108


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise BlindkeyError(f"{what} needs root: sudo {Path(sys.argv[0]).name} service ...")


def system_plan(blindkey: Path, layout: SystemLayout) -> Plan:
    units = layout.unit_dir
    return Plan(
        manager="systemd",
        artifacts=[
            Artifact(units / BROKER_UNIT, broker_unit(blindkey, layout).encode()),
            Artifact(units / PROXY_UNIT, proxy_unit(blindkey, layout).encode()),
        ],
        start=[
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", BROKER_UNIT, PROXY_UNIT],
        ],
        notes=[
            f"secrets, agents and approvals are the broker's: run the CLI as {layout.broker_user} "
            f"with BLINDKEY_HOME={layout.broker_home}; the allowlist is the proxy's "
            f"(BLINDKEY_HOME={layout.proxy_home}, user {layout.proxy_user})"
        ],
    )


def install_system(blindkey: Path, layout: SystemLayout, *, dry_run: bool) -> None:
    plan = system_plan(blindkey, layout)
    steps = [
        f"create the users {layout.broker_user} and {layout.proxy_user} if missing "
        f"({layout.proxy_user} in the group {layout.broker_user})",
        f"create {layout.broker_home} and {layout.proxy_home} (0700) and their config.toml: "
        f"[broker] socket = {layout.socket}, the broker allowing {layout.proxy_user}'s uid",
    ]
    if dry_run:
        for step in steps:
            say(f"# {step}")
        plan.show()
        # A preview that the real install would refuse says so, and fails as it would.
        problem = hidden_program(blindkey)
        if problem is not None:
            raise BlindkeyError(f"--dry-run: the real install would refuse: {problem}")
        return
    require_root("service install --system")
    problem = hidden_program(blindkey)
    if problem is not None:
        raise BlindkeyError(problem)
    _ensure_user(layout.broker_user, None)
    _ensure_user(layout.proxy_user, layout.broker_user)
    proxy_uid = pwd.getpwnam(layout.proxy_user).pw_uid
    _prepare_home(blindkey, layout.broker_user, layout.broker_home, layout, allow=proxy_uid)
    _prepare_home(blindkey, layout.proxy_user, layout.proxy_home, layout, allow=None)
    plan.write()
    plan.run(systemd_runs(user=False))


def hidden_program(blindkey: Path) -> str | None:
    """Why the hardened units could not start `blindkey` (or its interpreter), if so."""
    for program in (blindkey, Path(sys.executable).resolve()):
        hidden = next((d for d in _HIDDEN if d in program.parents), None)
        if hidden is not None:
            return (
                f"{program} is under {hidden}, which the hardened units hide: "
                "install blindkey system-wide first, e.g. in a venv under /opt made with "
                "the system's python3"
            )
    return None


def uninstall_system(layout: SystemLayout) -> None:
    """Stops and removes the units; the users and their homes (the vault) stay."""
    require_root("service uninstall --system")
    if systemd_runs(user=False):
        subprocess.run(
            ["systemctl", "disable", "--now", PROXY_UNIT, BROKER_UNIT],
            capture_output=True,
            check=False,
        )
    removed = [remove(layout.unit_dir / unit) for unit in (PROXY_UNIT, BROKER_UNIT)]
    remove(SUDOERS_FILE)
    if systemd_runs(user=False):
        run_checked(["systemctl", "daemon-reload"])
    if not any(removed):
        say("no system units were installed")
    say(
        f"kept the users {layout.broker_user}, {layout.proxy_user} and their homes "
        f"{layout.broker_home}, {layout.proxy_home} (the vault and the audit)"
    )


def _ensure_user(name: str, group: str | None) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        run_checked(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", name]
        )  # fmt: skip
        say(f"created the system user {name}")
    if group is not None and name not in grp.getgrnam(group).gr_mem:
        run_checked(["usermod", "--append", "--groups", group, name])


def _prepare_home(
    blindkey: Path, user: str, home: Path, layout: SystemLayout, allow: int | None
) -> None:
    """The home as StateDirectory= will find it, initialised by its own user (which also
    proves that user can run this blindkey), then pointed at the broker's socket."""
    entry = pwd.getpwnam(user)
    if not home.exists():
        home.mkdir(mode=0o700, parents=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    try:
        initialised = subprocess.run(
            [str(blindkey), "init"],
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=[],
            env={"BLINDKEY_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(home)},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as exc:
        problem = exc.strerror or str(exc)
    else:
        problem = "" if initialised.returncode == 0 else initialised.stderr.strip() or "failed"
    if problem:
        raise BlindkeyError(
            f"{user} cannot run {blindkey} init ({problem}): blindkey and its Python must be "
            "installed where every user may read them"
        )
    paths = resolve_paths({"BLINDKEY_HOME": str(home)})

    def point(document: tomlkit.TOMLDocument) -> None:
        broker = toml_table(document, "broker")
        broker["socket"] = str(layout.socket)
        if allow is not None:
            uids = [int(u) for u in broker.get("allowed_uids", [])]
            broker["allowed_uids"] = sorted({*uids, allow})

    edit_config(paths.config_file, paths.lock_file, point)
    for written in (paths.config_file, paths.lock_file):
        os.chown(written, entry.pw_uid, entry.pw_gid)


def install_sudoers(
    user: str, blindkey: Path, *, dry_run: bool, target: Path = SUDOERS_FILE
) -> None:
    """The elevate drop-in, checked by `visudo -cf` before it is moved into place: a file
    sudo cannot parse would lock everyone out of sudo."""
    from blindkey.broker.elevate import sudoers_rule

    text = sudoers_rule(user, blindkey)
    if dry_run:
        try:
            _root_owned(blindkey)
        except BlindkeyError as exc:  # no rule is shown that the install would not write
            raise BlindkeyError(
                f"--dry-run: the real install would refuse the sudoers rule: {exc}"
            ) from None
        say(f"# {target} (mode 0440, checked with visudo -cf)")
        say(text.rstrip("\n"))
        return
    sudoers_allowed(blindkey)
    land_checked(text, target)
    say(f"wrote {target}: {user} may run `sudo {blindkey} elevate ...`")


def sudoers_allowed(blindkey: Path) -> None:
    require_root("service install --elevate-user")
    _root_owned(blindkey)


def land_checked(text: str, target: Path) -> None:
    """Write `text` beside `target`, let visudo check it there, then rename it into place;
    a file visudo refuses is removed and `target` stays as it was."""
    target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".blindkey-elevate.", dir=target.parent)
    candidate = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        candidate.chmod(0o440)
        visudo = shutil.which("visudo") or "/usr/sbin/visudo"
        checked = subprocess.run(
            [visudo, "-cf", str(candidate)], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            problem = (checked.stderr or checked.stdout).strip().replace(str(candidate), "it")
            raise BlindkeyError(f"visudo refused the drop-in: {problem}")
        os.replace(candidate, target)
    finally:
        candidate.unlink(missing_ok=True)


def _root_owned(blindkey: Path) -> None:
    """sudo runs this program as root: no one but root may be able to change it, its
    interpreter's environment or a directory above either."""
    from blindkey.service import units

    package = Path(units.__file__).resolve().parent.parent
    checked = {blindkey, Path(sys.prefix).resolve(), package}
    for path in list(checked):
        checked.update(path.parents)
    for path in sorted(checked):
        st = path.stat()
        if st.st_uid != 0 or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise BlindkeyError(
                f"{path} can be changed by a user other than root, who could then run anything "
                "as root through the sudoers rule: install blindkey system-wide (root-owned)"
            )
