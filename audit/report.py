"""`audit report --html`: one self-contained page (inline CSS and SVG, no script, nothing
fetched) with calls over time by decision, per-secret and per-agent tables, flagged
records, the changes and approvals on the record, and what `audit verify` says.

Built in two passes over the records (`gather`), each a stream: the page of an audit of
millions of records costs what its tables and the latest rows shown cost, not the audit."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape as _html
from typing import Any

from blindkey.audit.events import EVENTS
from blindkey.audit.printable import event_detail, printable
from blindkey.audit.summary import Summary, Tally, summarise, timeline
from blindkey.audit.verify import Verdict

CHART_W, CHART_H, PAD = 900, 220, 36
ALLOWED, BLOCKED = "#2f855a", "#c53030"
MAX_FLAGGED = 200
MAX_EVENTS = 200
# Records a security lead looks for beside the calls: who changed policy, who approved what,
# who was refused a code, what was handed out raw, what an outage left as a count.
LISTED_EVENTS = (frozenset(EVENTS) - {"request", "mcp"}) | {"gap"}
Points = list[tuple[datetime, int, int]]


@dataclass
class ReportData:
    summary: Summary
    points: Points
    flagged: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_FLAGGED))
    flagged_count: int = 0
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    events_count: int = 0


def gather(records: Callable[[], Iterable[dict[str, Any]]]) -> ReportData:
    """The page's figures from two passes of `records()` (a fresh stream each call)."""
    summary = summarise(records())
    data = ReportData(summary, [])

    def second_pass() -> Iterable[dict[str, Any]]:
        for record in records():
            if record.get("flags"):
                data.flagged.append(record)
                data.flagged_count += 1
            if record.get("event") in LISTED_EVENTS:
                data.events.append(record)
                data.events_count += 1
            yield record

    data.points = timeline(second_pass(), summary.calls_first, summary.calls_last)
    return data


def escape(value: str) -> str:
    """HTML-escaped, with controls shown: the page is read, and copied into terminals."""
    return _html(printable(value))


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;
max-width:960px;color:#1a202c;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em}
.muted{color:#4a5568}.ok{color:#2f855a;font-weight:600}.bad{color:#c53030;font-weight:600}
table{border-collapse:collapse;width:100%;margin:.5em 0}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #e2e8f0}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{border:1px solid #e2e8f0;border-radius:8px;padding:.6em 1em;min-width:8em}
.card b{display:block;font-size:1.5em}
.flag{background:#fefcbf;border-radius:4px;padding:0 .3em;margin-right:.2em}
"""


def _chart(points: Points) -> str:
    if not points:
        return "<p class=muted>No calls in this period.</p>"
    peak = max(a + b for _, a, b in points) or 1
    inner_w, inner_h = CHART_W - 2 * PAD, CHART_H - 2 * PAD
    width = inner_w / len(points)
    bars = []
    for index, (moment, allowed, blocked) in enumerate(points):
        x = PAD + index * width
        allowed_h = inner_h * allowed / peak
        blocked_h = inner_h * blocked / peak
        base = PAD + inner_h
        title = f"{moment:%Y-%m-%d %H:%M:%S} UTC: {allowed} allowed, {blocked} blocked"
        bars.append(
            f"<g><title>{escape(title)}</title>"
            f'<rect x="{x:.1f}" y="{base - allowed_h:.1f}" width="{max(width - 1, 1):.1f}" '
            f'height="{allowed_h:.1f}" fill="{ALLOWED}"/>'
            f'<rect x="{x:.1f}" y="{base - allowed_h - blocked_h:.1f}" '
            f'width="{max(width - 1, 1):.1f}" height="{blocked_h:.1f}" fill="{BLOCKED}"/></g>'
        )
    first, last = points[0][0], points[-1][0]
    axis = (
        f'<line x1="{PAD}" y1="{PAD + inner_h}" x2="{PAD + inner_w}" y2="{PAD + inner_h}" '
        'stroke="#718096"/>'
        f'<text x="{PAD}" y="{CHART_H - 8}" font-size="12">{first:%Y-%m-%d %H:%M}</text>'
        f'<text x="{PAD + inner_w}" y="{CHART_H - 8}" font-size="12" text-anchor="end">'
        f"{last:%Y-%m-%d %H:%M}</text>"
        f'<text x="{PAD - 4}" y="{PAD + 4}" font-size="12" text-anchor="end">{peak}</text>'
        f'<text x="{PAD - 4}" y="{PAD + inner_h}" font-size="12" text-anchor="end">0</text>'
        f'<rect x="{CHART_W - 200}" y="6" width="12" height="12" fill="{ALLOWED}"/>'
        f'<text x="{CHART_W - 184}" y="16" font-size="12">allowed</text>'
        f'<rect x="{CHART_W - 110}" y="6" width="12" height="12" fill="{BLOCKED}"/>'
        f'<text x="{CHART_W - 94}" y="16" font-size="12">blocked</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="calls over time" '
        f'viewBox="0 0 {CHART_W} {CHART_H}" width="100%">{axis}{"".join(bars)}</svg>'
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table(title: str, tallies: dict[str, Tally]) -> str:
    rows = []
    for name, tally in sorted(tallies.items(), key=lambda item: (-item[1].calls, item[0])):
        figures = tally.as_json()
        refusals = ", ".join(f"{escape(k)} {v}" for k, v in figures["refusals"].items()) or "-"
        rows.append(
            f"<tr><td>{escape(name)}</td><td class=n>{tally.calls}</td>"
            f"<td class=n>{tally.allowed}</td><td class=n>{tally.blocked}</td>"
            f"<td class=n>{tally.failed}</td>"
            f"<td>{refusals}</td><td class=n>{tally.bytes_out:,}</td>"
            f"<td class=n>{_ms(figures['p50_ms'])}</td><td class=n>{_ms(figures['p99_ms'])}</td>"
            f"<td class=n>{tally.flagged}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan=10 class=muted>none</td></tr>"
    return (
        f"<h2>{escape(title)}</h2><table><thead><tr><th>{escape(title.split()[-1])}</th>"
        "<th class=n>calls</th><th class=n>allowed</th><th class=n>blocked</th>"
        "<th class=n>failed</th>"
        "<th>refusals</th><th class=n>bytes out</th><th class=n>p50 ms</th>"
        f"<th class=n>p99 ms</th><th class=n>flagged</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _flagged(flagged: deque[dict[str, Any]], count: int) -> str:
    if not flagged:
        return "<h2>Flagged records</h2><p class=muted>Nothing flagged.</p>"
    rows = []
    for record in flagged:
        flags = "".join(f"<span class=flag>{escape(str(f))}</span>" for f in record["flags"])
        outcome = (
            record.get("status") if record.get("decision") == "allowed" else record.get("reason")
        )
        rows.append(
            f"<tr><td>{escape(str(record.get('ts', '')))}</td><td>{flags}</td>"
            f"<td>{escape(str(record.get('agent') or '-'))}</td>"
            f"<td>{escape(', '.join(map(str, record.get('secrets') or [])) or '-')}</td>"
            f"<td>{escape(str(record.get('method', '')))} {escape(str(record.get('url', '')))}</td>"
            f"<td>{escape(str(outcome))}</td><td class=n>{record.get('seq', '')}</td></tr>"
        )
    note = (
        f"<p class=muted>The latest {len(flagged)} of {count}.</p>" if count > len(flagged) else ""
    )
    return (
        f"<h2>Flagged records ({count})</h2>{note}<table><thead><tr><th>time</th>"
        "<th>flags</th><th>agent</th><th>secrets</th><th>request</th><th>outcome</th>"
        f"<th class=n>seq</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _events(events: deque[dict[str, Any]], count: int) -> str:
    title = "Changes, approvals and releases"
    if not events:
        return f"<h2>{title}</h2><p class=muted>None in this period.</p>"
    rows = []
    for record in events:
        detail = event_detail(record)
        rows.append(
            f"<tr><td>{escape(str(record.get('ts', '')))}</td>"
            f"<td>{escape(str(record.get('event')))}</td><td>{escape(detail)}</td>"
            f"<td class=n>{record.get('seq', '')}</td></tr>"
        )
    note = f"<p class=muted>The latest {len(events)} of {count}.</p>" if count > len(events) else ""
    return (
        f"<h2>{title} ({count})</h2>{note}<table><thead><tr><th>time</th><th>event</th>"
        f"<th>detail</th><th class=n>seq</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _verdict(verdict: Verdict) -> str:
    if verdict.ok:
        anchored = (
            f", anchored by the broker at seq {verdict.anchor['seq']}" if verdict.anchor else ""
        )
        return (
            f"<p class=ok>Chain verified: {verdict.records} records, seq "
            f"{verdict.first_seq or 0} to {verdict.last_seq or 0}{anchored}.</p>"
        )
    return f"<p class=bad>Chain broken at seq {verdict.bad_seq}: {escape(verdict.reason or '')}</p>"


def sections(data: ReportData, verdict: Verdict) -> str:
    """The report's body: the chain's verdict, the counts, the chart, the tables and the
    flagged records (`audit report --html` and the approvers' page show the same)."""
    summary = data.summary
    total = summary.total
    cards = "".join(
        f"<div class=card><b>{value}</b>{escape(label)}</div>"
        for label, value in (
            ("calls", f"{total.calls:,}"),
            ("allowed", f"{total.allowed:,}"),
            ("blocked", f"{total.blocked:,}"),
            ("failed", f"{total.failed:,}"),
            ("flagged", f"{total.flagged:,}"),
            ("cut answers", f"{total.cut:,}"),
            ("other events", f"{sum(summary.events.values()) - total.calls:,}"),
        )
    )
    return (
        f"{_verdict(verdict)}<div class=cards>{cards}</div>"
        f"<h2>Calls over time</h2>{_chart(data.points)}"
        f"{_table('Per secret', summary.by_secret)}{_table('Per agent', summary.by_agent)}"
        f"{_flagged(data.flagged, data.flagged_count)}"
    )


def render(data: ReportData, verdict: Verdict, window: str) -> str:
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>blindkey audit report</title><style>{STYLE}</style></head><body>"
        f"<h1>blindkey audit report</h1><p class=muted>{escape(window)}; made {made}</p>"
        f"{sections(data, verdict)}"
        f"{_events(data.events, data.events_count)}</body></html>\n"
    )
