"""The audit report's figures (audit/report.py: the same chart, tables, flagged records and
chain verdict as `audit report --html`) and the policy-change history, read from the
audit on a worker thread: a large audit takes a while and the page's streams go on."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from blindkey.audit.reader import Filter, iter_all, parse_since
from blindkey.audit.report import escape, gather, sections
from blindkey.audit.verify import verify
from blindkey.broker.audit_anchor import broker_anchor
from blindkey.config.paths import Paths

MAX_CHANGES = 500


def _report(paths: Paths, since: str) -> str:
    selection = Filter(since=parse_since(since))
    data = gather(lambda: iter_all(paths.audit_dir, selection)[0])
    verdict = verify(paths.audit_dir, broker_anchor(paths)[0])
    return f"<p class=muted>Records of the last {escape(since)}.</p>{sections(data, verdict)}"


async def report_body(paths: Paths, since: str = "24h") -> str:
    return await asyncio.to_thread(_report, paths, since)


def _changes(paths: Paths) -> list[dict[str, Any]]:
    records, _ = iter_all(paths.audit_dir, Filter())
    kept: deque[dict[str, Any]] = deque(maxlen=MAX_CHANGES)
    kept.extend(r for r in records if r.get("event") == "config")
    return list(kept)


async def policy_changes(paths: Paths) -> list[dict[str, Any]]:
    """The latest MAX_CHANGES `event: config` records, oldest first."""
    return await asyncio.to_thread(_changes, paths)
