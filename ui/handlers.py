"""The page's routes. Forms answer with a redirect to their page and a message shown once
there; the passkey calls of the script answer JSON. Every action is the broker's (see
broker_calls.py); a refused code says why, as the CLI does."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from aiohttp import web

from blindkey.audit.report import escape
from blindkey.broker.approvals.codes import CodeNeeded, CodeRefused
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths
from blindkey.ui import broker_calls, pages, report_page
from blindkey.ui.assets import CSS, JS
from blindkey.ui.guard import HEADERS, SESSIONS, Handler, refusal, session_of
from blindkey.ui.live import calls_after, recent_calls
from blindkey.ui.session import COOKIE, SESSION_TTL

PATHS = web.AppKey("paths", Paths)


@web.middleware
async def failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A page the broker could not answer for says why, as the CLI would (a broker of
    another user, an approvals file that cannot be read), instead of a bare 500."""
    try:
        return await handler(request)
    except BlindkeyError as exc:
        page = pages.layout("blindkey ui", "", session_of(request),
                            f"<p class=bad>{escape(str(exc))}</p>")  # fmt: skip
        return web.Response(status=503, text=page, content_type="text/html")


def _html(page: str) -> web.Response:
    return web.Response(text=page, content_type="text/html")


def _back(to: str) -> web.Response:
    return web.Response(status=303, headers={"Location": to})


async def login(request: web.Request) -> web.Response:
    opened = request.app[SESSIONS].login(request.query.get("token"))
    if opened is None:
        return refusal(403, "this login link was used already or has expired; run `blindkey "
                       "ui` again for a new one")  # fmt: skip
    cookie, _ = opened
    response = _back("/approvals")
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", path="/",
                        max_age=int(SESSION_TTL))  # fmt: skip
    return response


async def home(request: web.Request) -> web.Response:
    return _back("/approvals")


async def static(request: web.Request) -> web.Response:
    if request.match_info["name"] == "ui.css":
        return web.Response(text=CSS, content_type="text/css")
    return web.Response(text=JS, content_type="text/javascript")


async def _try(request: web.Request, work: Any, done: str) -> str | None:
    """Run a broker action for a form; its outcome becomes the next page's message."""
    session = session_of(request)
    try:
        await work
    except (CodeRefused, CodeNeeded, BlindkeyError) as exc:
        session.say("bad", str(exc))
        return None
    session.say("ok", done)
    return done


async def approvals(request: web.Request) -> web.Response:
    rows = await broker_calls.approvals(request.app[PATHS], "requests")
    return _html(pages.approvals_page(session_of(request), rows))


async def approve(request: web.Request) -> web.Response:
    form = await request.post()
    ident, code = str(form.get("request", "")), str(form.get("code", "")).strip()
    approver = str(form.get("approver", "")).strip() or None
    await _try(request, broker_calls.approvals(
        request.app[PATHS], "approve_request", request=ident, approver=approver, code=code or None
    ), f"{ident} approved")  # fmt: skip
    return _back("/approvals")


async def deny(request: web.Request) -> web.Response:
    ident = str((await request.post()).get("request", ""))
    await _try(request, broker_calls.approvals(request.app[PATHS], "deny", request=ident),
               f"{ident} denied")  # fmt: skip
    return _back("/approvals")


async def grants(request: web.Request) -> web.Response:
    rows = await broker_calls.approvals(request.app[PATHS], "grants")
    return _html(pages.grants_page(session_of(request), rows))


async def revoke(request: web.Request) -> web.Response:
    form = await request.post()
    fields = {key: str(form.get(key, "")) for key in ("secret", "env", "agent")}
    await _try(request, broker_calls.approvals(request.app[PATHS], "revoke", **fields),
               f"grant of {fields['secret']} to {fields['agent']} revoked")  # fmt: skip
    return _back("/grants")


async def agents(request: web.Request) -> web.Response:
    rows = await broker_calls.agents(request.app[PATHS])
    return _html(pages.agents_page(session_of(request), rows))


async def calls(request: web.Request) -> web.Response:
    rows, start = recent_calls(request.app[PATHS].audit_dir)
    return _html(pages.calls_page(session_of(request), rows, start))


async def report(request: web.Request) -> web.Response:
    body = await report_page.report_body(request.app[PATHS])
    return _html(pages.layout("Audit report", "report", session_of(request), body))


async def changes(request: web.Request) -> web.Response:
    records = await report_page.policy_changes(request.app[PATHS])
    return _html(pages.changes_page(session_of(request), records))


async def passkeys(request: web.Request) -> web.Response:
    paths = request.app[PATHS]
    approvers = await broker_calls.approvals(paths, "approvers")
    keys = await broker_calls.approvals(paths, "passkeys")
    return _html(pages.passkeys_page(session_of(request), approvers, keys))


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, event: str, data: object) -> None:
    await response.write(f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n".encode())


async def calls_events(request: web.Request) -> web.StreamResponse:
    given = request.query.get("from", "0")
    start = int(given) if given.isdigit() else 0
    response = await _stream(request)
    # The page went away (closed, reloaded): the stream ends with it.
    with contextlib.suppress(ConnectionResetError):
        async for row in calls_after(request.app[PATHS].audit_dir, start):
            await _send(response, "call", row)
    return response


async def approvals_events(request: web.Request) -> web.StreamResponse:
    csrf = session_of(request).csrf
    response = await _stream(request)
    with contextlib.suppress(ConnectionResetError):
        async for rows in broker_calls.pending_changes(request.app[PATHS]):
            ids = " ".join(row["id"] for row in rows)
            await _send(response, "pending", {"ids": ids, "html": pages.pending_rows(rows, csrf)})
    return response
