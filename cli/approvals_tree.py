"""The command tree of approvals: totp, approve, deny, approvals, grants, elevate.

Handlers live in broker/ (the broker owns approvers, grants, lockouts and the elevated
window); this module only names them, imported when chosen (see cli/main.py).
"""

from __future__ import annotations

import argparse

from blindkey.config.arguments import Subcommands, action_group, json_flag

HANDLERS = "blindkey.cli.approvals"


def approver_code(p: argparse.ArgumentParser) -> None:
    """--by NAME --code CODE: an existing approver's consent to a change that needs one."""
    p.add_argument(
        "--by",
        metavar="NAME",
        help="the approver consenting (may be omitted while there is one approver)",
    )
    p.add_argument(
        "--code",
        metavar="CODE",
        help="their current code or a recovery code (else prompted, or one line of stdin)",
    )


def _code(p: argparse.ArgumentParser, *, approver: bool = True) -> None:
    if approver:
        p.add_argument("--approver", metavar="NAME", help="whose code (default: the only approver)")
    p.add_argument(
        "--code",
        metavar="CODE",
        help="a code from the authenticator app or a recovery code "
        "(else prompted without echo, or one line of stdin)",
    )


def _totp(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "totp",
        help="approvers: people with an authenticator app",
        description="An approver scans a QR code with a phone's authenticator app; their "
        "codes then approve grants. Seeds stay with the broker and are never shown again.",
    )
    p = actions.add_parser("enroll", help="start enrolling an approver: QR code and otpauth URI")
    p.add_argument("--approver", metavar="NEW", default=None, help="name (default: default)")
    approver_code(p)
    json_flag(p, 'print {"approver": NAME, "otpauth_uri": URI}')
    p.set_defaults(handler=f"{HANDLERS}:cmd_totp_enroll")
    p = actions.add_parser(
        "confirm", help="activate an enrolled approver with a first code; prints recovery codes"
    )
    p.add_argument("--approver", metavar="NEW", default=None, help="name (default: default)")
    p.add_argument("--code", metavar="CODE", help="the code the app shows now")
    p.set_defaults(handler=f"{HANDLERS}:cmd_totp_confirm")
    p = actions.add_parser("list", help="approvers and whether they are active or locked")
    json_flag(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_totp_list")
    p = actions.add_parser("remove", help="remove an approver (needs another approver's code)")
    p.add_argument("name", metavar="NAME")
    approver_code(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_totp_remove")


def _approve(sub: Subcommands) -> None:
    p = sub.add_parser(
        "approve",
        help="grant use of a secret for a limited time (needs a code)",
        description="approve SECRET grants it for its tier's time (controlled 4h, "
        "restricted 15m); approve --request ID approves a pending or held call.",
    )
    p.add_argument("secret", metavar="SECRET", nargs="?")
    p.add_argument("--request", metavar="ID", help="a pending request (ap_...) from the agent")
    p.add_argument("--agent", metavar="NAME", help="only this agent (default: every agent)")
    p.add_argument("--env", help="environment (default: the active one)")
    p.add_argument("--for", dest="duration", metavar="DURATION", help="shorter than the tier's")
    _code(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_approve")
    p = sub.add_parser("deny", help="refuse a pending or held call")
    p.add_argument("--request", metavar="ID", required=True)
    p.set_defaults(handler=f"{HANDLERS}:cmd_deny")
    actions = action_group(sub, "approvals", help="calls waiting for a human")
    p = actions.add_parser("list", help="pending requests: id, agent, secret, method, host, path")
    json_flag(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_approvals_list")
    actions = action_group(sub, "grants", help="grants in force and their expiry")
    p = actions.add_parser("list", help="grants, and grants still waiting for approvers")
    json_flag(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_grants_list")
    p = actions.add_parser("revoke", help="end grants now (the proxy stops within 1 s)")
    p.add_argument("secret", metavar="SECRET", nargs="?")
    p.add_argument("--agent", metavar="NAME", help="only this agent's grant")
    p.add_argument("--env", help="environment (default: the active one)")
    p.add_argument("--all", action="store_true", help="every grant")
    p.set_defaults(handler=f"{HANDLERS}:cmd_grants_revoke")


def _elevate(sub: Subcommands) -> None:
    p = sub.add_parser(
        "elevate",
        help="run a command as root inside a TOTP-approved window (via sudo)",
        description="sudo blindkey elevate CODE -- CMD opens a window for the invoking user "
        "and runs CMD as root; `elevate session -- CMD` reuses the window; `elevate end` "
        "closes it; `elevate status` shows it.",
    )
    p.add_argument("what", metavar="CODE|session|status|end")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    json_flag(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_elevate")


def add_approval_commands(sub: Subcommands) -> None:
    for add in (_totp, _approve, _elevate):
        add(sub)
