"""`blindkey proxy logs`: the audit trail, filtered, as a table or JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from blindkey.audit.printable import event_detail, inert_json, printable
from blindkey.audit.reader import Filter, follow, iter_all, last_records, parse_since
from blindkey.audit.writer import audit_file
from blindkey.config.console import say
from blindkey.config.paths import Paths


def _line(record: dict[str, Any]) -> str:
    if record.get("event", "request") != "request":
        # Grants, exec, config changes...: their own fields, after the event's name.
        detail = event_detail(record)
        return f"{record.get('ts', '')}  {record.get('event')!s:7}  {detail}"
    secrets = ",".join(record.get("secrets") or []) or "-"
    outcome = record.get("status") if record.get("decision") == "allowed" else record.get("reason")
    if record.get("complete") is False:
        outcome = f"{outcome} cut"
    flags = f"  [{','.join(map(str, record['flags']))}]" if record.get("flags") else ""
    # One record standing for the calls of an unidentified caller over an interval.
    count = f"  x{record['count']}" if record.get("count") else ""
    return (
        f"{record.get('ts', '')}  {record.get('decision', '')!s:7}  {outcome!s:18}  "
        f"{record.get('agent') or '-'!s:12}  {secrets:20}  {record.get('method', '')} "
        f"{record.get('url', '')}  {record.get('duration_ms', 0)}ms{count}{flags}"
    )


def _print(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(inert_json(orjson.dumps(record).decode()) + "\n")
    else:
        say(printable(_line(record)))
    sys.stdout.flush()


def _print_array(records: Iterable[dict[str, Any]]) -> None:
    """A JSON array written one record at a time (the audit may not fit in memory)."""
    out = sys.stdout
    written = False
    for record in records:
        out.write(",\n" if written else "[\n")
        out.write(inert_json(orjson.dumps(record).decode()))
        written = True
    out.write("\n]\n" if written else "[]\n")


def cmd_logs(paths: Paths, args: argparse.Namespace) -> int:
    selection = Filter(
        secret=args.secret,
        agent=args.agent,
        status=args.status,
        since=parse_since(args.since) if args.since else None,
        flagged=bool(getattr(args, "flagged", False)),
    )
    path = audit_file(paths.audit_dir)
    records: Iterable[dict[str, Any]]
    if args.last is not None:
        # From the end back: the last N records cost N records, not the whole audit.
        records, start = last_records(paths.audit_dir, selection, max(args.last, 0))
    else:
        records, start = iter_all(paths.audit_dir, selection)
    if args.json and not args.follow:
        _print_array(records)
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
