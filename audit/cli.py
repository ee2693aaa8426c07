"""`blindkey proxy logs`: the audit trail, filtered, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from blindkey.audit.reader import Filter, follow, parse_since, read_records
from blindkey.audit.writer import audit_file
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
