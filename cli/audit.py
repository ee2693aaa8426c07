"""`blindkey audit verify | summary | export | report`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import say
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.paths import Paths

if TYPE_CHECKING:
    from blindkey.audit.reader import Filter
    from blindkey.audit.summary import Summary
    from blindkey.audit.verify import Verdict


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


def check(paths: Paths, progress: Callable[[int], None] | None = None) -> Verdict:
    from blindkey.audit.verify import verify
    from blindkey.broker.audit_anchor import broker_anchor

    anchor, _ = broker_anchor(paths)
    return verify(paths.audit_dir, anchor, progress)


def cmd_audit_verify(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.audit.verify import verify
    from blindkey.broker.audit_anchor import broker_anchor

    if args.file is not None:
        return verify_copy_command(paths, args)
    if args.public_key is not None:
        raise UsageError("--public-key goes with --file (a copy checked without the HMAC key)")
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


def verify_copy_command(paths: Paths, args: argparse.Namespace) -> int:
    """`audit verify --file`: a copy against its signed checkpoints, without the HMAC key."""
    from blindkey.audit.checkpoint import PUBLIC_FILE, PublicKeyError, load_public
    from blindkey.audit.verify_copy import verify_copy

    key_file = Path(args.public_key) if args.public_key else paths.audit_dir / PUBLIC_FILE
    try:
        public = load_public(key_file)
        verdict = verify_copy(Path(args.file), public)
    except PublicKeyError as exc:
        raise BlindkeyError(f"{exc}: give the audit's checkpoint.pub with --public-key") from exc
    except OSError as exc:
        raise BlindkeyError(f"cannot read {args.file}: {exc.strerror}") from exc
    if args.json:
        sys.stdout.write(orjson.dumps(verdict.as_json()).decode() + "\n")
        return 0 if verdict.ok else 1
    for problem in verdict.problems:
        where = f" (line {problem['line']})" if problem["line"] else ""
        say(f"{problem['reason']}{where}")
    if verdict.more_problems:
        say(f"... and {verdict.more_problems} more")
    if not verdict.ok:
        first = verdict.problems[0]
        raise BlindkeyError(f"copy broken at seq {first['seq']}: {first['reason']}")
    unsigned = (
        f"; seq {verdict.unsigned[0]}..{verdict.unsigned[1]} follow the last checkpoint and "
        "are not signed yet"
        if verdict.unsigned
        else ""
    )
    start = (
        f"; seq {verdict.unverified[0]} starts the copy: its own content is covered only "
        "by the records before it, which the copy lacks"
        if verdict.unverified and verdict.unverified[0] == verdict.first_seq
        else ""
    )
    say(
        f"copy ok: {verdict.records} records, seq {verdict.first_seq}..{verdict.last_seq}, "
        f"{verdict.checkpoints} checkpoint(s) signed by key {verdict.key_id}, signed through "
        f"seq {verdict.signed_through}{unsigned}{start}; the copy ends at seq "
        f"{verdict.last_seq}: whether records followed it, only the audit itself can tell"
    )
    return 0


def _selection(args: argparse.Namespace) -> Filter:
    from blindkey.audit.reader import Filter, parse_since

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
    from blindkey.audit.reader import iter_all

    records, _ = iter_all(paths.audit_dir, _selection(args))
    return records


def rfc3339_of(moment: datetime | None) -> str:
    """A time as people read it here everywhere: RFC 3339, UTC, milliseconds, Z."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _summary_text(summary: Summary) -> list[str]:
    from blindkey.audit.summary import Tally

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
    from blindkey.audit.printable import printable
    from blindkey.audit.summary import summarise

    summary = summarise(_records(paths, args))
    if args.json:
        sys.stdout.write(orjson.dumps(summary.as_json()).decode() + "\n")
        return 0
    for line in _summary_text(summary):
        say(printable(line))
    return 0


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
    from blindkey.audit.export import export_chunks

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
    from blindkey.audit.report import gather, render

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


def _window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="WHEN", help="1h, 30m, 2d or 2026-11-21T10:00Z")
    p.add_argument("--until", metavar="WHEN", help="same forms as --since")


def add_commands(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "audit",
        help="check, summarise and export the audit",
        description="Records are chained (seq and an HMAC): `audit verify` finds an edited, "
        "removed, inserted or reordered record and a cut tail.",
    )
    p = actions.add_parser(
        "verify",
        help="exit 0 when every record is accounted for, else 1",
        description="Without --file: the audit of this home, with the HMAC key and the "
        "broker's anchor. With --file: a copy (shipped, `audit export --format jsonl`, "
        "`proxy logs --json`) checked against its signed checkpoints with the public key "
        "only; an edited, removed or reordered record and a cut are each named by seq.",
    )
    p.add_argument("--file", metavar="EXPORT", help="verify this copy (JSON lines or a JSON array)")
    p.add_argument(
        "--public-key",
        metavar="FILE",
        help="the checkpoint key's public half (default: checkpoint.pub beside the audit)",
    )
    json_flag(p)
    p.set_defaults(handler=cmd_audit_verify)
    p = actions.add_parser(
        "summary", help="per secret, agent and host: calls, refusals, bytes, p50/p99"
    )
    _window(p)
    json_flag(p)
    p.set_defaults(handler=cmd_audit_summary)
    p = actions.add_parser("export", help="records as CSV or JSON lines")
    p.add_argument("--format", choices=("csv", "jsonl"), required=True)
    _window(p)
    p.add_argument("--secret", metavar="NAME", help="records that used this secret")
    p.add_argument("--agent", metavar="NAME", help="records of this agent")
    p.add_argument("--status", choices=("allowed", "blocked"), help="by decision")
    p.add_argument("--flagged", action="store_true", help="only flagged records")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    p.set_defaults(handler=cmd_audit_export)
    p = actions.add_parser("report", help="one self-contained HTML page for people")
    p.add_argument("--html", metavar="FILE", required=True, help="where to write the page")
    _window(p)
    p.set_defaults(handler=cmd_audit_report)
    from blindkey.cli import ship  # the `audit ship` subtree lives in its own module

    ship.add_commands(actions)
