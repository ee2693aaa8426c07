"""The pages, rendered on the server: every value escaped (controls shown, as in the audit
report), every form carrying the session's CSRF token, no inline script or style."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from blindkey.audit.printable import event_detail
from blindkey.audit.report import escape
from blindkey.ui.session import Session

NAV = (
    ("approvals", "Pending approvals"),
    ("calls", "Live calls"),
    ("grants", "Grants"),
    ("agents", "Agents"),
    ("report", "Report"),
    ("changes", "Policy changes"),
    ("passkeys", "Passkeys"),
)


def text(value: object) -> str:
    return "-" if value is None or value == "" else escape(str(value))


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def layout(title: str, active: str, session: Session, body: str) -> str:
    nav = "".join(
        f'<a href="/{page}"{" class=on" if page == active else ""}>{label}</a>'
        for page, label in NAV
    )
    flash = "".join(f"<p class={kind}>{escape(line)}</p>" for kind, line in session.take_flash())
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f'<meta name=csrf content="{session.csrf}"><title>{escape(title)} - blindkey</title>'
        '<link rel=stylesheet href="/static/ui.css"><script src="/static/ui.js" defer></script>'
        f"</head><body><header><b>blindkey</b>{nav}</header><main><h1>{escape(title)}</h1>"
        f"<div id=messages>{flash}</div>{body}</main></body></html>\n"
    )


def table(headings: Sequence[str], rows: Iterable[str], empty: str, attrs: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headings)
    body = "".join(rows) or f"<tr><td colspan={len(headings)} class=muted>{escape(empty)}</td></tr>"
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _hidden(csrf: str, **fields: str) -> str:
    pairs = {"csrf": csrf, **fields}
    return "".join(f'<input type=hidden name="{k}" value="{escape(v)}">' for k, v in pairs.items())


def pending_rows(rows: list[dict[str, Any]], csrf: str) -> str:
    """The pending list (also sent whole to the page when it changes)."""
    shown = []
    for row in rows:
        ident, hidden = escape(row["id"]), _hidden(csrf, request=row["id"])
        approve = (
            f'<form class=inline method=post action="/approvals/approve">{hidden}'
            "<input name=approver placeholder=approver aria-label=approver>"
            "<input name=code placeholder=code autocomplete=one-time-code inputmode=numeric "
            "aria-label='TOTP code'><button>Approve</button></form>"
            f'<button type=button data-passkey-approve="{ident}">Approve with passkey</button> '
            f'<form class=inline method=post action="/approvals/deny">{hidden}'
            "<button class=deny>Deny</button></form>"
        )
        shown.append(
            f'<tr id="{ident}"><td><code>{ident}</code></td><td>{text(row["agent"])}</td>'
            f"<td>{text(row['secret'])}</td><td>{text(row['env'])}</td>"
            f"<td>{text(row['method'])} {text(row.get('covers'))}{text(row['path'])}</td>"
            f"<td class=n>{int(row['age_s'])}s</td><td>{approve}</td></tr>"
        )
    return table(
        ("id", "agent", "secret", "env", "request", "age", "answer"), shown,
        "nothing waits for a human",
    )  # fmt: skip


def approvals_page(session: Session, rows: list[dict[str, Any]]) -> str:
    ids = " ".join(row["id"] for row in rows)
    body = (
        "<p class=muted>Calls held or refused until a human answers. Approving grants the "
        "secret to that agent for that destination only, for the secret's tier time.</p>"
        f'<section id=pending data-ids="{escape(ids)}">{pending_rows(rows, session.csrf)}</section>'
    )
    return layout("Pending approvals", "approvals", session, body)


def calls_page(session: Session, rows: list[dict[str, Any]], start: int) -> str:
    shown = []
    for row in reversed(rows):
        outcome = row["status"] if row.get("decision") == "allowed" else row.get("reason")
        secrets = ", ".join(row.get("secrets") or [])
        cells = (row["ts"], row["agent"], row["method"], row["url"], secrets, row["decision"],
                 outcome, row["duration_ms"])  # fmt: skip
        shown.append(
            f"<tr class={text(row.get('decision'))}>"
            + "".join(f"<td>{text(c)}</td>" for c in cells)
            + "</tr>"
        )
    headings = ("time", "agent", "method", "url", "secrets", "decision", "outcome", "ms")
    return layout(
        "Live calls", "calls", session,
        "<p class=muted>Every call as the audit records it, newest first; new ones appear "
        "as they are written.</p>"
        + table(headings, shown, "no calls yet", f" id=calls data-from={start}"),
    )  # fmt: skip


def grants_page(session: Session, grants: list[dict[str, Any]]) -> str:
    rows = []
    for grant in grants:
        fields = {"secret": grant["secret"], "env": grant["env"], "agent": grant["agent"]}
        revoke = (
            f"<form class=inline method=post action='/grants/revoke'>"
            f"{_hidden(session.csrf, **fields)}<button class=deny>Revoke</button></form>"
        )
        have = f"{len(grant['approvers'])} of {grant['needed']}: {', '.join(grant['approvers'])}"
        rows.append(
            f"<tr><td>{text(grant['secret'])}</td><td>{text(grant['env'])}</td>"
            f"<td>{text(grant['agent'])}</td><td>{text(grant.get('covers'))}</td>"
            f"<td>{text(grant['expires'])}</td><td>{text(have)}</td><td>{revoke}</td></tr>"
        )
    headings = ("secret", "env", "agent", "covers", "expires", "approvers", "")
    return layout("Grants", "grants", session, table(headings, rows, "no grant in force"))


def agents_page(session: Session, agents: list[dict[str, Any]]) -> str:
    rows = [
        f"<tr><td>{text(a['agent'])}</td><td>{when(a['created'])}</td>"
        f"<td>{'active' if a['revoked'] is None else 'revoked ' + when(a['revoked'])}</td></tr>"
        for a in agents
    ]
    body = "<p class=muted>Add and revoke agents with <code>blindkey agent</code>.</p>"
    return layout("Agents", "agents", session, body + table(("agent", "created", "state"), rows,
                                                             "no agents"))  # fmt: skip


def changes_page(session: Session, records: list[dict[str, Any]]) -> str:
    rows = []
    for record in reversed(records):
        detail = {k: v for k, v in record.items() if k not in ("change", "by", "names")}
        rows.append(
            f"<tr><td>{text(record.get('ts'))}</td><td>{text(record.get('change'))}</td>"
            f"<td>{text(record.get('by'))}</td>"
            f"<td>{text(', '.join(map(str, record.get('names') or [])))}</td>"
            f"<td>{text(event_detail(detail))}</td></tr>"
        )
    headings = ("time", "change", "by", "names", "detail")
    body = "<p class=muted>Every change of policy on the record (event config), newest first.</p>"
    return layout("Policy changes", "changes", session,
                  body + table(headings, rows, "no change on the record"))  # fmt: skip


def passkeys_page(
    session: Session, approvers: list[dict[str, Any]], keys: list[dict[str, Any]]
) -> str:
    rows = [
        f"<tr><td>{text(k['approver'])}</td><td><code>{text(k['id'])}</code></td>"
        f"<td>{when(k['created'])}</td></tr>"
        for k in keys
    ]
    names = ", ".join(a["approver"] for a in approvers if a["status"] == "active") or "none"
    body = (
        "<p class=muted>A passkey approves with your device's user verification (PIN, "
        "fingerprint) and is bound to the one request it approves. Enrolling one needs a "
        f"TOTP code of its approver. Active approvers: {escape(names)}.</p>"
        "<form id=enrol-passkey><input name=approver placeholder=approver aria-label=approver>"
        "<input name=code placeholder='TOTP code' autocomplete=one-time-code "
        "aria-label='TOTP code'><button>Enrol a passkey</button></form>"
        + table(("approver", "passkey", "enrolled"), rows, "no passkey enrolled")
    )
    return layout("Passkeys", "passkeys", session, body)
