"""`audit export`: records as CSV or JSON lines, a record at a time (the audit may not fit
in memory), made safe for where an export is read: spreadsheets and terminals."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from blindkey.audit.printable import inert_json, printable

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_FIELDS = (
    "seq", "ts", "event", "request_id", "agent", "env", "method", "url", "host", "secrets",
    "styles", "decision", "reason", "status", "complete", "flags", "duration_ms", "bytes_in",
    "bytes_out", "redactions", "short_secrets", "approver", "grant", "argv", "exit_status",
)  # fmt: skip


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def _cell(text: str) -> str:
    # A cell a spreadsheet would run as a formula is written as text (a leading TAB or CR
    # is skipped by some before they look for the "="); controls are shown, not kept: a
    # CSV is read in terminals too.
    return printable("'" + text if text[:1] in FORMULA_START else text)


def export_chunks(records: Iterable[dict[str, Any]], form: str) -> Iterator[bytes]:
    """The export, a record at a time."""
    if form == "jsonl":
        for record in records:
            yield (inert_json(orjson.dumps(record).decode()) + "\n").encode()
        return
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for record in records:
        # A cell a spreadsheet would run as a formula is written as text.
        row = [_csv_value(record.get(name)) for name in CSV_FIELDS]
        writer.writerow([_cell(cell) for cell in row])
        yield out.getvalue().encode()
        out.seek(0)
        out.truncate()
    if out.tell():
        yield out.getvalue().encode()
