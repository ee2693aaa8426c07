"""Elevation: `sudo blindkey elevate CODE -- CMD` runs CMD as root inside a window that an
approver's code opened for the invoking user (SUDO_USER)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

# What sudoers accepts as a user name without quoting, and what useradd makes.
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")
# sudoers treats these specially in a command path: refuse rather than escape.
_PATH_UNSAFE = re.compile(r"[\s,:=\\*?\[\]!#\"'()]")


def sudoers_rule(user: str, blindkey: Path) -> str:
    """The sudoers drop-in that lets USER run `<blindkey> elevate ...` as root, and nothing
    else. env_reset keeps the caller's environment (BLINDKEY_HOME, PYTHONPATH, PATH) out
    of the root process: the window, approvers and codes are read from root's own files.
    Check it with `visudo -cf FILE` before installing it."""
    if not _USER.match(user):
        raise BlindkeyError(f"{user!r} is not a user name sudoers can name")
    if not blindkey.is_absolute() or _PATH_UNSAFE.search(str(blindkey)):
        raise BlindkeyError(
            f"{blindkey}: the sudoers rule needs an absolute path without spaces or "
            "sudoers metacharacters"
        )
    command = str(blindkey)
    return (
        f"# blindkey: {user} may run `blindkey elevate` as root; the window it opens needs\n"
        "# an approver's TOTP code. Written by `blindkey service install --elevate-user`.\n"
        f"Defaults!{command} env_reset, !setenv\n"
        f"{user} ALL=(root) NOPASSWD: {command} elevate *\n"
    )


def cmd_elevate(paths: Paths, args: argparse.Namespace) -> int:
    raise BlindkeyError("elevate is not available in this build")
