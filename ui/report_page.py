"""The audit report's figures (audit/report.py: the same chart, tables, flagged records and
chain verdict as `audit report --html`) and the policy-change history, read from the
audit on a worker thread: a large audit takes a while and the page's streams go on."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from blindkey.audit.chain import Head
from blindkey.audit.reader import Filter, iter_all, parse_since
from blindkey.audit.report import _chart, _flagged, _table, _verdict, escape, gather
from blindkey.audit.verify import verify
from blindkey.broker.link import ask
from blindkey.broker.protocol import BrokerUnavailable
from blindkey.config.paths import Paths

ANCHOR_TIMEOUT = 3.0
MAX_CHANGES = 500


def _anchor(paths: Paths) -> Head | None:
    """The broker's anchor, so a cut tail shows (as `audit verify` asks for it)."""
    try:
        reply = ask(paths, "audit_anchor", timeout=ANCHOR_TIMEOUT)
    except BrokerUnavailable:
        return None
    seq, chain = reply.get("seq"), reply.get("chain")
    return Head(seq, chain) if isinstance(seq, int) and isinstance(chain, str) else None


def _report(paths: Paths, since: str) -> str:
    selection = Filter(since=parse_since(since))
    data = gather(lambda: iter_all(paths.audit_dir, selection)[0])
    verdict = verify(paths.audit_dir, _anchor(paths))
    total = data.summary.total
    cards = "".join(
        f"<div class=card><b>{value:,}</b>{label}</div>"
        for label, value in (("calls", total.calls), ("allowed", total.allowed),
                             ("blocked", total.blocked), ("failed", total.failed),
                             ("flagged", total.flagged))
    )  # fmt: skip
    return (
        f"<p class=muted>Records of the last {escape(since)}.</p>{_verdict(verdict)}"
        f"<div class=cards>{cards}</div><h2>Calls over time</h2>{_chart(data.points)}"
        f"{_table('Per secret', data.summary.by_secret)}"
        f"{_table('Per agent', data.summary.by_agent)}"
        f"{_flagged(data.flagged, data.flagged_count)}"
    )


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
