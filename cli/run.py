"""`blindkey run [--isolate] -- CMD`: an agent's command, run so that it can use blindkey
and, isolated, cannot read what blindkey keeps.

In the single-user deployment an agent with a shell is the vault's owner: it can read the
vault key, approvals.bin, the chain key and reach the broker's socket. `--isolate` runs CMD
under bubblewrap as the same user with every directory of blindkey's home (and of the
default home, when BLINDKEY_HOME points elsewhere) covered by an empty tmpfs, in its own
PID namespace with its own /proc (no path through /proc/PID/root into the proxy's view),
in a session of its own (no TIOCSTI into the caller's terminal). The network is shared:
the proxy stays reachable on loopback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from blindkey.broker.release_env import pass_through
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths, resolve_paths

BWRAP = "bwrap"


def hidden_paths(paths: Paths, configured_socket: str = "") -> list[Path]:
    """Every directory blindkey keeps something in, this home's and the default one's."""
    homes = [paths]
    if "BLINDKEY_HOME" in os.environ:
        default = {k: v for k, v in os.environ.items() if k != "BLINDKEY_HOME"}
        homes.append(resolve_paths(default))
    found: dict[Path, None] = {}
    for home in homes:
        for directory in home.all_dirs():
            found[directory.absolute()] = None
    if configured_socket:
        found[Path(configured_socket).absolute().parent] = None
    # A parent covers its children: mounting over both would hide the parent's tmpfs.
    ordered = sorted(found, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return kept


def isolation_argv(hidden: Iterable[Path], command: list[str]) -> list[str]:
    argv = [
        BWRAP,
        "--dev-bind", "/", "/",
        "--unshare-pid", "--unshare-ipc",
        "--proc", "/proc",
        "--new-session",
        "--die-with-parent",
    ]  # fmt: skip
    for path in hidden:
        if path.exists():
            argv += ["--tmpfs", str(path)]
    return [*argv, "--", *command]


def _bubblewrap_works(hidden: list[Path]) -> str | None:
    """None when bubblewrap can make its namespaces here, else what it said."""
    if shutil.which(BWRAP) is None:
        return "bubblewrap (bwrap) is not installed: `apt install bubblewrap` (or your system's)"
    probe = subprocess.run(
        isolation_argv(hidden, ["true"]), capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode == 0:
        return None
    said = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
    return (
        f"bubblewrap cannot isolate here ({said[0].removeprefix('bwrap: ')}): user namespaces "
        "are off or not allowed for this user (see sysctl user.max_user_namespaces)"
    )


def cmd_run(paths: Paths, args: argparse.Namespace) -> int:
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("run needs a command: blindkey run [--isolate] -- CMD [ARG...]")
    if args.isolate:
        try:
            configured = load_settings(paths.config_file).broker.socket
        except BlindkeyError:
            configured = ""
        hidden = hidden_paths(paths, configured)
        problem = _bubblewrap_works(hidden)
        if problem is not None:
            raise BlindkeyError(f"run --isolate: {problem}")
        command = isolation_argv(hidden, command)
    try:
        process = subprocess.Popen(command)
    except FileNotFoundError:
        raise BlindkeyError(f"{command[0]}: command not found") from None
    try:
        status = process.wait()
    except KeyboardInterrupt:
        status = process.wait()
    return pass_through(status)
