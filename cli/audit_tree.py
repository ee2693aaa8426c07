"""The command tree of `blindkey audit`: verify, summary, export, report.

Handlers live in audit/ and are imported when chosen (see cli/main.py).
"""

from __future__ import annotations

import argparse

from blindkey.config.arguments import Subcommands, action_group, json_flag

HANDLERS = "blindkey.cli.audit"


def _window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="WHEN", help="1h, 30m, 2d or 2026-11-21T10:00Z")
    p.add_argument("--until", metavar="WHEN", help="same forms as --since")


def add_audit_commands(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "audit",
        help="check, summarise and export the audit",
        description="Records are chained (seq and an HMAC): `audit verify` finds an edited, "
        "removed, inserted or reordered record and a cut tail.",
    )
    p = actions.add_parser("verify", help="exit 0 when every record is accounted for, else 1")
    json_flag(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_audit_verify")
    p = actions.add_parser(
        "summary", help="per secret, agent and host: calls, refusals, bytes, p50/p99"
    )
    _window(p)
    json_flag(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_audit_summary")
    p = actions.add_parser("export", help="records as CSV or JSON lines")
    p.add_argument("--format", choices=("csv", "jsonl"), required=True)
    _window(p)
    p.add_argument("--secret", metavar="NAME", help="records that used this secret")
    p.add_argument("--agent", metavar="NAME", help="records of this agent")
    p.add_argument("--status", choices=("allowed", "blocked"), help="by decision")
    p.add_argument("--flagged", action="store_true", help="only flagged records")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.set_defaults(handler=f"{HANDLERS}:cmd_audit_export")
    p = actions.add_parser("report", help="one self-contained HTML page for people")
    p.add_argument("--html", metavar="FILE", required=True, help="where to write the page")
    _window(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_audit_report")
