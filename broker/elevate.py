"""Elevation: `sudo blindkey elevate CODE -- CMD` runs CMD as root inside a window that an
approver's code opened for the invoking user (SUDO_USER).

It runs as root with the environment sudo reset, so the window, the approvers whose codes
open it and their lockout are in root's own blindkey files: the invoking user can neither
point it at a home of their own (with an approver of their own) nor read or reset them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from blindkey.audit.events import append_event
from blindkey.audit.record import rfc3339
from blindkey.broker.approvals.model import ApprovalsState, Window
from blindkey.broker.approvals.service import Approvals
from blindkey.broker.approvals_link import exit_for_refusal
from blindkey.config.console import emit_json, say
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
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


def _invoker() -> str:
    """The user who ran sudo: the window is theirs."""
    if os.geteuid() != 0:
        raise BlindkeyError("elevate runs as root: `sudo blindkey elevate ...`")
    user = os.environ.get("SUDO_USER", "")
    if not _USER.match(user) or user == "root":
        raise BlindkeyError(
            "elevate opens a window for the user who ran sudo (SUDO_USER); run it through sudo "
            "as that user"
        )
    return user


def _command(argv: list[str]) -> list[str]:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("name the command: sudo blindkey elevate CODE -- CMD [ARG...]")
    return argv


def _window(approvals: Approvals, user: str) -> float | None:
    approvals.load()
    window = approvals.state.elevate.get(user)
    if window is None:
        return None
    return window.expires if window.expires > approvals.clock() else None


def _run(paths: Paths, user: str, argv: list[str], how: str) -> int:
    """CMD as root; its argv and exit status are an audit record whatever happens."""
    try:
        status = subprocess.run(argv, check=False).returncode
    except OSError as exc:
        append_event(paths.audit_dir, "elevate",
                     {"user": user, "argv": argv, "how": how, "exit_status": 127,
                      "error": exc.strerror or str(exc)})  # fmt: skip
        raise BlindkeyError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    append_event(paths.audit_dir, "elevate",
                 {"user": user, "argv": argv, "how": how, "exit_status": status})  # fmt: skip
    # A signal's death as the shell reports it.
    return status if status >= 0 else 128 - status


def _open(approvals: Approvals, settings: Settings, user: str, code: str) -> float:
    def work(state: ApprovalsState) -> float:
        name = approvals.pick(state, None)
        approvals.verify(state, name, code, f"open an elevated window for {user}")
        expires = approvals.clock() + settings.approvals.elevate_ttl
        state.elevate[user] = Window(expires, name)
        approvals.note("elevate", user=user, approver=name, window="open",
                        expires=rfc3339(expires))  # fmt: skip
        return expires

    return approvals.edit(work)


def _end(approvals: Approvals, user: str) -> bool:
    def work(state: ApprovalsState) -> bool:
        if state.elevate.pop(user, None) is None:
            return False
        approvals.note("elevate", user=user, window="end")
        return True

    return approvals.edit(work)


def _through_sudo(what: str, as_json: bool) -> None:
    """`blindkey elevate status|end` as the user: the window is root's to read and close,
    so ask sudo (the drop-in allows `blindkey elevate *`, with no password)."""
    program = Path(sys.argv[0])
    if not program.is_absolute() or program.name != "blindkey":
        raise BlindkeyError(f"run it as root: sudo blindkey elevate {what}")
    command = ["sudo", "-n", str(program), "elevate", what, *(["--json"] if as_json else [])]
    try:
        os.execvp("sudo", command)  # noqa: S606 - sudo decides, by the drop-in
    except OSError as exc:
        why = exc.strerror or exc
        raise BlindkeyError(f"cannot run sudo ({why}): sudo blindkey elevate {what}") from exc


@exit_for_refusal
def cmd_elevate(paths: Paths, args: argparse.Namespace) -> int:
    what, argv = args.what, list(args.argv)
    approvals = Approvals(paths)
    if what in ("status", "end"):
        # argparse hands everything after the first word to the command: --json included.
        as_json = args.json or argv == ["--json"]
        if argv and not (what == "status" and argv == ["--json"]):
            raise UsageError(f"elevate {what} takes no command")
        if os.geteuid() != 0:
            _through_sudo(what, as_json)
        user = _invoker()
        if what == "end":
            ended = _end(approvals, user)
            say(f"the elevated window of {user} is closed" if ended else "no window was open")
            return 0
        expires = _window(approvals, user)
        if as_json:
            emit_json({"user": user, "open": expires is not None,
                       "expires": rfc3339(expires) if expires else None})  # fmt: skip
        elif expires is None:
            say(f"no elevated window is open for {user}")
        else:
            say(f"the elevated window of {user} is open until {rfc3339(expires)}")
        return 0
    command = _command(argv)
    user = _invoker()
    if what == "session":
        if _window(approvals, user) is None:
            raise BlindkeyError(
                f"no elevated window is open for {user}: open one with "
                "`sudo blindkey elevate CODE -- CMD`"
            )
        return _run(paths, user, command, "session")
    settings = load_settings(paths.config_file)
    _open(approvals, settings, user, what)
    return _run(paths, user, command, "code")
