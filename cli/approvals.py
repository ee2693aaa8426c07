"""`blindkey totp|approve|deny|approvals|grants|elevate`: the human's side of approvals.

Every command is done by the broker (over its socket, from the broker's own user), or by
this process on the broker's files when no broker runs. A refused code exits 4.
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
from collections.abc import Callable
from typing import Any

from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import emit_json, say, warn
from blindkey.config.console import table as print_table
from blindkey.config.errors import UsageError
from blindkey.config.loader import parse_duration
from blindkey.config.paths import Paths

Handler = Callable[[Paths, argparse.Namespace], int]


def exit_for_refusal(handler: Handler) -> Handler:
    """Exit 4, with the refusal's one line, when a code was refused: the approvals' own
    mapping, imported when the command runs (building the tree loads none of it)."""

    @functools.wraps(handler)
    def run(paths: Paths, args: argparse.Namespace) -> int:
        from blindkey.broker.approvals_link import exit_for_refusal as mapped

        return mapped(handler)(paths, args)

    return run


@exit_for_refusal
def cmd_totp_enroll(paths: Paths, args: argparse.Namespace) -> int:
    import segno

    from blindkey.broker.approvals_link import call, with_code

    result = with_code(
        args.code,
        f"Code of approver {args.by or 'default'} (consent to a new approver)",
        lambda code: call(paths, "enroll", approver=args.approver, by=args.by, code=code),
        required=False,
    )
    name, uri = result["approver"], result["otpauth_uri"]
    if args.json:
        emit_json({"approver": name, "otpauth_uri": uri})
        return 0
    qr = io.StringIO()
    segno.make(uri, error="m").terminal(out=qr, compact=True)
    sys.stdout.write(qr.getvalue())
    say(f"Scan this with the authenticator app of approver {name}, or enter this URI:")
    say(uri)
    say(f"Then activate it with the code the app shows: blindkey totp confirm --approver {name}")
    warn("the seed is shown only now: clear the terminal's scrollback afterwards")
    return 0


@exit_for_refusal
def cmd_totp_confirm(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.approvals_link import call, read_code

    code = args.code or read_code(f"Code shown by the app for {args.approver or 'default'}")
    result = call(paths, "confirm", approver=args.approver, code=code)
    say(f"approver {result['approver']} is active. Recovery codes (each works once in place")
    say("of a code; they are shown only now, keep them offline):")
    for recovery in result["recovery_codes"]:
        say(f"  {recovery}")
    return 0


def cmd_totp_list(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.approvals_link import call

    rows = call(paths, "approvers")
    if args.json:
        emit_json(rows)
    elif not rows:
        say("no approvers; enrol one with: blindkey totp enroll")
    else:
        print_table(
            [[r["approver"], r["status"], r["recovery_codes_left"]] for r in rows],
            ["APPROVER", "STATUS", "RECOVERY CODES LEFT"],
        )
    return 0


@exit_for_refusal
def cmd_totp_remove(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.approvals_link import call, with_code

    with_code(
        args.code,
        f"Code of approver {args.by or 'default'} (consent to removing {args.name})",
        lambda code: call(paths, "remove", name=args.name, by=args.by, code=code),
        required=False,
    )
    say(f"approver {args.name} is removed")
    return 0


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--for {text!r}: {exc}") from None


@exit_for_refusal
def cmd_approve(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.approvals_link import call, read_code

    if (args.secret is None) == (args.request is None):
        raise UsageError("name a SECRET or give --request ID (one of them)")
    if args.request is not None and (args.agent or args.env):
        raise UsageError("--request approves what the request names: no --agent or --env")
    duration = _duration(args.duration)
    code = args.code or read_code(f"Code of approver {args.approver or 'default'}")
    if args.request is not None:
        grant = call(
            paths, "approve_request", request=args.request, duration=duration,
            approver=args.approver, code=code,
        )  # fmt: skip
    else:
        grant = call(
            paths, "approve", secret=args.secret, env=args.env, agent=args.agent,
            duration=duration, approver=args.approver, code=code,
        )  # fmt: skip
    _say_grant(grant)
    return 0


def _say_grant(grant: dict[str, Any]) -> None:
    whom = "every agent" if grant["agent"] == "*" else f"agent {grant['agent']}"
    covers = grant.get("covers", "*")
    where = f"for any host {grant['secret']} may reach" if covers == "*" else f"for {covers} only"
    have, needed = len(grant["approvers"]), grant["needed"]
    if have < needed:
        say(
            f"{grant['secret']} in {grant['env']} for {whom}: approved by "
            f"{', '.join(grant['approvers'])}; {needed - have} more approver(s) needed "
            f"({have} of {needed})"
        )
    else:
        say(
            f"{grant['secret']} in {grant['env']} is granted to {whom} {where} until "
            f"{grant['expires']}"
        )


def cmd_deny(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.approvals_link import call

    pending = call(paths, "deny", request=args.request)
    say(f"denied {pending['id']}: {pending['agent']} {pending['method']} {pending['covers']}")
    return 0


def cmd_approvals_list(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.approvals_link import call

    rows = call(paths, "requests")
    if args.json:
        emit_json(rows)
    elif not rows:
        say("no calls wait for approval")
    else:
        print_table(
            [[r["id"], r["agent"], r["secret"], r["env"], r["method"], r["covers"], r["path"],
              f"{r['age_s']}s"] for r in rows],
            ["ID", "AGENT", "SECRET", "ENV", "METHOD", "DESTINATION", "PATH", "AGE"],
        )  # fmt: skip
        say(
            "approve --request ID grants the secret for that DESTINATION (scheme, host and "
            "port) only; approve SECRET grants it for every host it may reach"
        )
    return 0


def cmd_grants_list(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.approvals_link import call

    rows = call(paths, "grants")
    if args.json:
        emit_json(rows)
    elif not rows:
        say("no grants")
    else:
        print_table(
            [[r["secret"], r["env"], r["agent"], r["covers"], r["expires"],
              f"{len(r['approvers'])}/{r['needed']} {','.join(r['approvers'])}"] for r in rows],
            ["SECRET", "ENV", "AGENT", "COVERS", "EXPIRES", "APPROVERS"],
        )  # fmt: skip
    return 0


def cmd_grants_revoke(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.approvals_link import call

    if args.all == (args.secret is not None):
        raise UsageError("give a SECRET or --all (one of them)")
    if args.all and (args.agent or args.env):
        raise UsageError("--all revokes every grant: no --agent or --env")
    count = call(paths, "revoke", secret=args.secret, env=args.env, agent=args.agent,
                 all=args.all or None)  # fmt: skip
    say(f"revoked {count} grant(s); the proxy no longer uses them")
    return 0


def cmd_elevate(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.elevate import cmd_elevate as elevate

    return elevate(paths, args)


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
    p.set_defaults(handler=cmd_totp_enroll)
    p = actions.add_parser(
        "confirm", help="activate an enrolled approver with a first code; prints recovery codes"
    )
    p.add_argument("--approver", metavar="NEW", default=None, help="name (default: default)")
    p.add_argument("--code", metavar="CODE", help="the code the app shows now")
    p.set_defaults(handler=cmd_totp_confirm)
    p = actions.add_parser("list", help="approvers and whether they are active or locked")
    json_flag(p)
    p.set_defaults(handler=cmd_totp_list)
    p = actions.add_parser("remove", help="remove an approver (needs another approver's code)")
    p.add_argument("name", metavar="NAME")
    approver_code(p)
    p.set_defaults(handler=cmd_totp_remove)


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
    p.set_defaults(handler=cmd_approve)
    p = sub.add_parser("deny", help="refuse a pending or held call")
    p.add_argument("--request", metavar="ID", required=True)
    p.set_defaults(handler=cmd_deny)
    actions = action_group(sub, "approvals", help="calls waiting for a human")
    p = actions.add_parser("list", help="pending requests: id, agent, secret, method, host, path")
    json_flag(p)
    p.set_defaults(handler=cmd_approvals_list)
    p = actions.add_parser(
        "watch",
        help="live list of pending requests; approve or deny them with a code",
        description="Shows each call waiting for a human as the broker tells of it (who, "
        "which secret, where, how long it waits) and reads commands: `approve N CODE`, "
        "`deny N`, `quit` (N: the number in the list, or the request's id). On a terminal "
        "the list is redrawn in place; otherwise each event is a line and each line of "
        "stdin a command. Approving is `approve --request`: the same codes, 2-of-2 and lockout.",
    )
    p.add_argument("--approver", metavar="NAME", help="whose codes (default: the only approver)")
    json_flag(p, "print each event as one JSON line (and each answer as one)")
    p.set_defaults(handler="blindkey.cli.approvals_watch:cmd_approvals_watch")
    actions = action_group(sub, "grants", help="grants in force and their expiry")
    p = actions.add_parser("list", help="grants, and grants still waiting for approvers")
    json_flag(p)
    p.set_defaults(handler=cmd_grants_list)
    p = actions.add_parser("revoke", help="end grants now (the proxy stops within 1 s)")
    p.add_argument("secret", metavar="SECRET", nargs="?")
    p.add_argument("--agent", metavar="NAME", help="only this agent's grant")
    p.add_argument("--env", help="environment (default: the active one)")
    p.add_argument("--all", action="store_true", help="every grant")
    p.set_defaults(handler=cmd_grants_revoke)


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
    p.set_defaults(handler=cmd_elevate)


def add_commands(sub: Subcommands) -> None:
    for add in (_totp, _approve, _elevate):
        add(sub)
