"""`blindkey totp|approve|deny|approvals|grants|elevate`: the human's side of approvals.

Every command is done by the broker (over its socket, from the broker's own user), or by
this process on the broker's files when no broker runs. A refused code exits 4.
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

import segno

from blindkey.broker.approvals_link import call, exit_for_refusal, read_code, with_code
from blindkey.config.console import emit_json, say, warn
from blindkey.config.console import table as print_table
from blindkey.config.errors import UsageError
from blindkey.config.loader import parse_duration
from blindkey.config.paths import Paths


@exit_for_refusal
def cmd_totp_enroll(paths: Paths, args: argparse.Namespace) -> int:
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
    code = args.code or read_code(f"Code shown by the app for {args.approver or 'default'}")
    result = call(paths, "confirm", approver=args.approver, code=code)
    say(f"approver {result['approver']} is active. Recovery codes (each works once in place")
    say("of a code; they are shown only now, keep them offline):")
    for recovery in result["recovery_codes"]:
        say(f"  {recovery}")
    return 0


def cmd_totp_list(paths: Paths, args: argparse.Namespace) -> int:
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
    pending = call(paths, "deny", request=args.request)
    say(f"denied {pending['id']}: {pending['agent']} {pending['method']} {pending['covers']}")
    return 0


def cmd_approvals_list(paths: Paths, args: argparse.Namespace) -> int:
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
