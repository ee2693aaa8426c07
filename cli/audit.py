"""`blindkey audit verify | summary | export | report`."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.chain import Head
from blindkey.audit.printable import inert_json, printable
from blindkey.audit.reader import Filter, iter_all, parse_since
from blindkey.audit.report import gather, render
from blindkey.audit.summary import Summary, Tally, summarise
from blindkey.audit.verify import Verdict, verify
from blindkey.broker.anchor import ANCHOR_FILE
from blindkey.broker.protocol import FrameDecoder, encode
from blindkey.config.console import say
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_FIELDS = (
    "seq", "ts", "event", "request_id", "agent", "env", "method", "url", "host", "secrets",
    "styles", "decision", "reason", "status", "complete", "flags", "duration_ms", "bytes_in",
    "bytes_out", "redactions", "short_secrets", "approver", "grant", "argv", "exit_status",
)  # fmt: skip
ANCHOR_TIMEOUT = 3.0
PROGRESS_AFTER = 1.0  # seconds before a long listing starts saying how far it is


class Progress:
    """Counts on stderr, only on a terminal and only once a listing takes a while."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.start = time.monotonic()
        self.shown = False
        self.enabled = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        if self.enabled and time.monotonic() - self.start > PROGRESS_AFTER:
            sys.stderr.write(f"\r{self.what}: {done:,} records")
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _ask_broker(socket_path: Path) -> Head | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ANCHOR_TIMEOUT)
        sock.connect(str(socket_path))
        sock.sendall(encode({"id": 1, "op": "audit_anchor"}))
        frames = FrameDecoder()
        while True:
            data = sock.recv(65536)
            if not data:
                return None
            for reply in frames.feed(data):
                if reply.get("id") == 1:
                    seq, chain = reply.get("seq"), reply.get("chain")
                    if isinstance(seq, int) and isinstance(chain, str):
                        return Head(seq, chain)
                    return None


def broker_anchor(paths: Paths) -> tuple[Head | None, str]:
    """The broker's anchor, and where it came from: the running broker, else its file."""
    try:
        settings = load_settings(paths.config_file)
        socket_path = paths.broker_socket_at(settings.broker.socket)
    except BlindkeyError:
        socket_path = paths.broker_socket
    with contextlib.suppress(OSError, ValueError):
        head = _ask_broker(socket_path)
        if head is not None:
            return head, "broker"
    with contextlib.suppress(OSError, ValueError):
        data = orjson.loads((paths.state_dir / ANCHOR_FILE).read_bytes())
        if isinstance(data.get("seq"), int) and isinstance(data.get("chain"), str):
            return Head(data["seq"], data["chain"]), "file"
    return None, "none"


def check(paths: Paths, progress: Callable[[int], None] | None = None) -> Verdict:
    anchor, _ = broker_anchor(paths)
    return verify(paths.audit_dir, anchor, progress)


def cmd_audit_verify(paths: Paths, args: argparse.Namespace) -> int:
    progress = Progress("verifying")
    anchor, source = broker_anchor(paths)
    verdict = verify(paths.audit_dir, anchor, progress)
    progress.done()
    if args.json:
        sys.stdout.write(orjson.dumps({**verdict.as_json(), "anchor_from": source}).decode())
        sys.stdout.write("\n")
        return 0 if verdict.ok else 1
    if not verdict.ok:
        where = f" ({verdict.file} line {verdict.line})" if verdict.file else ""
        raise BlindkeyError(f"audit broken at seq {verdict.bad_seq}: {verdict.reason}{where}")
    span = f"seq {verdict.first_seq}..{verdict.last_seq}" if verdict.records else "no records"
    anchored = (
        f"; the broker's anchor (seq {anchor.seq}) is in it"
        if anchor is not None and anchor.seq
        else "; no anchor from the broker: a cut tail cannot be ruled out"
    )
    legacy = f"; {verdict.unchained} older unchained records" if verdict.unchained else ""
    counted = (
        f"; {verdict.counted} records of an audit outage are known only by count (event gap)"
        if verdict.counted
        else ""
    )
    say(
        f"audit ok: {verdict.records} records, {span}, in {len(verdict.files)} file(s)"
        f"{anchored}{legacy}{counted}"
    )
    return 0


def _selection(args: argparse.Namespace) -> Filter:
    return Filter(
        secret=getattr(args, "secret", None),
        agent=getattr(args, "agent", None),
        status=getattr(args, "status", None),
        since=parse_since(args.since) if args.since else None,
        until=parse_since(args.until) if getattr(args, "until", None) else None,
        flagged=bool(getattr(args, "flagged", False)),
    )


def _records(paths: Paths, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The selected records, streamed: the audit may not fit in memory."""
    records, _ = iter_all(paths.audit_dir, _selection(args))
    return records


def rfc3339_of(moment: datetime | None) -> str:
    """A time as people read it here everywhere: RFC 3339, UTC, milliseconds, Z."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _summary_text(summary: Summary) -> list[str]:
    lines = [
        f"from {rfc3339_of(summary.first)} to {rfc3339_of(summary.last)}",
        "events: " + (", ".join(f"{k} {v}" for k, v in summary.events.most_common()) or "none"),
    ]

    def block(title: str, tallies: dict[str, Tally]) -> None:
        lines.append("")
        lines.append(
            f"{title:24} {'calls':>7} {'allowed':>7} {'blocked':>7} {'failed':>7} "
            f"{'bytes out':>11} {'p50 ms':>8} {'p99 ms':>8}  refusals"
        )
        for name, tally in sorted(tallies.items(), key=lambda item: (-item[1].calls, item[0])):
            figures = tally.as_json()
            refusals = ", ".join(f"{k} {v}" for k, v in figures["refusals"].items()) or "-"
            p50, p99 = figures["p50_ms"], figures["p99_ms"]
            lines.append(
                f"{name[:24]:24} {tally.calls:7} {tally.allowed:7} {tally.blocked:7} "
                f"{tally.failed:7} {tally.bytes_out:11} {p50 if p50 is not None else '-':>8} "
                f"{p99 if p99 is not None else '-':>8}  {refusals}"
            )

    block("secret", summary.by_secret)
    block("agent", summary.by_agent)
    block("host", summary.by_host)
    return lines


def cmd_audit_summary(paths: Paths, args: argparse.Namespace) -> int:
    summary = summarise(_records(paths, args))
    if args.json:
        sys.stdout.write(orjson.dumps(summary.as_json()).decode() + "\n")
        return 0
    for line in _summary_text(summary):
        say(printable(line))
    return 0


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


def _write_out(target: str | None, chunks: Iterable[bytes]) -> int:
    """Write the chunks to `target` (stdout for None or -); how many were written."""
    written = 0
    if target is None or target == "-":
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
            written += 1
        sys.stdout.flush()
        return written
    path = Path(target)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                written += 1
    except OSError as exc:
        raise BlindkeyError(f"cannot write {path}: {exc.strerror}") from exc
    return written


def cmd_audit_export(paths: Paths, args: argparse.Namespace) -> int:
    counted = _Counted(_records(paths, args))
    _write_out(args.output, export_chunks(counted, args.format))
    if args.output not in (None, "-"):
        say(f"{counted.count} records written to {args.output}")
    return 0


class _Counted:
    """An iterable of records that counts what passed through it."""

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        self.records, self.count = records, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for record in self.records:
            self.count += 1
            yield record


def cmd_audit_report(paths: Paths, args: argparse.Namespace) -> int:
    data = gather(lambda: _records(paths, args))
    progress = Progress("verifying")
    verdict = check(paths, progress)
    progress.done()
    window = f"records since {args.since}" if args.since else "all records"
    if getattr(args, "until", None):
        window += f" until {args.until}"
    page = render(data, verdict, window)
    _write_out(args.html, [page.encode()])
    records = sum(data.summary.events.values())
    say(f"report of {records} records written to {args.html}")
    return 0
