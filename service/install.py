"""The handlers of `blindkey service install|uninstall|status` (flags in cli_service.py).

Per user: a systemd user unit on Linux, a LaunchAgent on macOS, both naming the blindkey
that runs this command. --system (root, Linux): see service_system.py.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from blindkey.config.console import emit_json, say
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.home import init_config
from blindkey.config.paths import Paths
from blindkey.proxy import lifecycle
from blindkey.service.plan import Artifact, Plan, remove, run_checked, systemd_runs
from blindkey.service.system import (
    install_sudoers,
    install_system,
    sudoers_allowed,
    uninstall_system,
)
from blindkey.service.units import (
    BROKER_UNIT,
    LABEL,
    PROXY_UNIT,
    USER_UNIT,
    SystemLayout,
    blindkey_path,
    launch_agent,
    user_unit,
)

EXIT_NOT_INSTALLED = 3


def cmd_service_install(paths: Paths, args: argparse.Namespace) -> int:
    return install(paths, args, sys.platform)


def cmd_service_uninstall(paths: Paths, args: argparse.Namespace) -> int:
    return uninstall(paths, args, sys.platform)


def cmd_service_status(paths: Paths, args: argparse.Namespace) -> int:
    return status(paths, args, sys.platform)


def user_home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def user_plan(paths: Paths, blindkey: Path, platform: str) -> Plan:
    if platform == "darwin":
        agent = user_home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
        return Plan(
            manager="launchd",
            artifacts=[Artifact(agent, launch_agent(blindkey, paths))],
            start=[["launchctl", "bootstrap", f"gui/{os.getuid()}", str(agent)]],
            notes=["launchd starts it at every login (RunAtLoad) and after a crash (KeepAlive)"],
        )
    if not platform.startswith("linux"):
        raise UsageError(
            f"service install knows systemd (Linux) and launchd (macOS), not {platform}"
        )
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or user_home() / ".config")
    unit = config_home / "systemd" / "user" / USER_UNIT
    user = pwd.getpwuid(os.getuid()).pw_name
    return Plan(
        manager="systemd --user",
        artifacts=[Artifact(unit, user_unit(blindkey, paths).encode())],
        start=[
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", USER_UNIT],
        ],
        notes=[
            "a user unit runs while you are logged in; to start it at boot without a login: "
            f"sudo loginctl enable-linger {user}"
        ],
    )


def _manager_runs(platform: str) -> bool:
    if platform == "darwin":
        return sys.platform == "darwin"
    return systemd_runs(user=True)


def install(paths: Paths, args: argparse.Namespace, platform: str) -> int:
    if args.elevate_user and not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", args.elevate_user):
        raise UsageError(f"--elevate-user {args.elevate_user!r}: not a user name")
    blindkey = blindkey_path()
    if args.elevate_user and not args.dry_run:
        # Checked before anything is written: a refusal here leaves the machine as it was.
        sudoers_allowed(blindkey)
    if args.system:
        if not platform.startswith("linux"):
            raise UsageError("--system sets up systemd system units: Linux only")
        install_system(blindkey, SystemLayout(), dry_run=args.dry_run)
    else:
        plan = user_plan(paths, blindkey, platform)
        if args.dry_run:
            plan.show()
        else:
            manager_runs = _manager_runs(platform)
            by_hand = lifecycle.running(paths) if manager_runs else None
            if by_hand is not None:
                raise BlindkeyError(
                    f"a proxy started by hand runs (pid {by_hand.pid}) and would keep the "
                    "service from starting: `blindkey proxy stop`, then install"
                )
            # The home the unit pins exists, with a config.toml to edit, before it starts.
            init_config(paths)
            plan.write()
            if manager_runs and platform == "darwin":
                # Bootstrapping an agent that is already loaded fails: unload it first.
                subprocess.run(
                    ["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"],
                    capture_output=True,
                    check=False,
                )
            plan.run(manager_runs)
    if args.elevate_user:
        install_sudoers(args.elevate_user, blindkey, dry_run=args.dry_run)
    return 0


def uninstall(paths: Paths, args: argparse.Namespace, platform: str) -> int:
    if args.system:
        uninstall_system(SystemLayout())
        return 0
    plan = user_plan(paths, Path("/"), platform)
    manager_runs = _manager_runs(platform)
    if manager_runs:
        stop = (
            ["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"]
            if platform == "darwin"
            else ["systemctl", "--user", "disable", "--now", USER_UNIT]
        )
        subprocess.run(stop, capture_output=True, check=False)
    removed = [remove(artifact.path) for artifact in plan.artifacts]
    if manager_runs and platform != "darwin":
        run_checked(["systemctl", "--user", "daemon-reload"])
    if not any(removed):
        say("the service was not installed")
    return 0


def describe(paths: Paths, platform: str, system: bool = False) -> dict[str, Any]:
    plan = user_plan(paths, Path("/"), platform)
    manager_runs = _manager_runs(platform)
    files = [artifact.path for artifact in plan.artifacts]
    if system:
        layout = SystemLayout()
        files = [layout.unit_dir / u for u in (BROKER_UNIT, PROXY_UNIT)]
        manager_runs = systemd_runs(user=False)
    installed = [f for f in files if f.exists()]
    named = _named_program(installed[-1]) if installed else None
    try:
        current: str | None = str(blindkey_path())
    except BlindkeyError:  # status reports; it does not fail on this
        current = None
    return {
        "installed": bool(installed),
        "mode": "system" if system else "user",
        "manager": "systemd" if system else plan.manager,
        "manager_running": manager_runs,
        "files": [str(f) for f in installed],
        "program": named,
        "program_is_this_blindkey": named is not None and named == current,
        "active": _active(platform, system) if manager_runs and installed else None,
        "proxy_running": lifecycle.running(paths) is not None,
    }


def status(paths: Paths, args: argparse.Namespace, platform: str) -> int:
    info = describe(paths, platform, args.system)
    if args.json:
        emit_json(info)
    elif not info["installed"]:
        flag = " --system" if args.system else ""
        say(f"the blindkey service is not installed (`blindkey service install{flag}`)")
    else:
        say(f"installed ({info['mode']}, {info['manager']}): {', '.join(info['files'])}")
        say(f"runs {info['program']}")
        if not info["program_is_this_blindkey"]:
            say("  (not this blindkey: `blindkey service install` again to point it here)")
        if info["manager_running"]:
            say(f"state: {info['active']}")
        else:
            say(f"{info['manager']} does not run here: the service is not started by it")
    return 0 if info["installed"] else EXIT_NOT_INSTALLED


def _named_program(file: Path) -> str | None:
    text = file.read_bytes()
    if file.suffix == ".plist":
        import plistlib

        arguments = plistlib.loads(text).get("ProgramArguments") or [None]
        return str(arguments[0]) if arguments[0] else None
    match = re.search(rb"^ExecStart=(\S+)", text, re.MULTILINE)
    return match.group(1).decode() if match else None


def _active(platform: str, system: bool) -> str:
    if platform == "darwin":
        printed = subprocess.run(
            ["launchctl", "print", f"gui/{os.getuid()}/{LABEL}"], capture_output=True, check=False
        )
        return "loaded" if printed.returncode == 0 else "not loaded"
    command = ["systemctl", "is-active"] if system else ["systemctl", "--user", "is-active"]
    units = [BROKER_UNIT, PROXY_UNIT] if system else [USER_UNIT]
    done = subprocess.run([*command, *units], capture_output=True, text=True, check=False)
    return ", ".join(done.stdout.split()) or "unknown"
