"""`blindkey proxy logs`: the audit trail, filtered, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from blindkey.audit.reader import Filter, follow, parse_since, read_records
from blindkey.audit.writer import audit_file
from blindkey.config.arguments import Subcommands, count
from blindkey.config.console import say
from blindkey.config.paths import Paths


def _line(record: dict[str, Any]) -> str:
    secrets = ",".join(record.get("secrets", [])) or "-"
    outcome = record.get("status") if record.get("decision") == "allowed" else record.get("reason")
    return (
        f"{record.get('ts', '')}  {record.get('decision', '')!s:7}  {outcome!s:18}  "
        f"{record.get('agent') or '-'!s:12}  {secrets:20}  {record.get('method', '')} "
        f"{record.get('url', '')}  {record.get('duration_ms', 0)}ms"
    )


def _print(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(record).decode() + "\n")
    else:
        say(_line(record))
    sys.stdout.flush()


def cmd_logs(paths: Paths, args: argparse.Namespace) -> int:
    selection = Filter(
        secret=args.secret,
        agent=args.agent,
        status=args.status,
        since=parse_since(args.since) if args.since else None,
    )
    path = audit_file(paths.audit_dir)
    records, start = read_records(path, selection)
    if args.last is not None:
        records = records[-args.last :] if args.last > 0 else []
    if args.json and not args.follow:
        sys.stdout.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for record in records:
            _print(record, args.json)
    if args.follow:
        try:
            for record in follow(path, selection, start):
                _print(record, args.json)
        except KeyboardInterrupt:
            return 0
    return 0


def add_logs_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "logs",
        help="show audit records (oldest first)",
        description="Audit records, oldest first. With --json: a JSON array, or one object "
        "per line with --follow.",
    )
    p.add_argument("--last", type=count, metavar="N", help="only the last N records")
    p.add_argument("--secret", metavar="NAME", help="records that used this secret")
    p.add_argument("--agent", metavar="NAME", help="records of this agent")
    p.add_argument("--status", choices=("allowed", "blocked"), help="by decision")
    p.add_argument("--since", metavar="WHEN", help="1h, 30m, 2d or 2026-11-21T10:00Z")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_logs)
