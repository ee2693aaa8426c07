"""The checks every request to the page passes, in this order, before any handler runs:

1. `Host` names this server (localhost or 127.0.0.1 at its port): a DNS-rebound name is
   another origin to the browser, whose page would otherwise read ours.
2. `Origin`, when sent, is this page's own, and Sec-Fetch-Site is not cross-site: another
   page may send requests here but its own origin says so.
3. A session, except for the login link and the stylesheet.
4. On POST, the session's CSRF token (form field `csrf` or header X-CSRF-Token).

Every answer carries a strict Content-Security-Policy: scripts and styles from this
server only, nothing fetched from anywhere else, no framing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from blindkey.ui.session import COOKIE, Session, Sessions


@dataclass
class Bound:
    """The port the page listens on, known once it is bound (it may be asked for as 0)."""

    port: int = 0


SESSIONS = web.AppKey("sessions", Sessions)
PORT = web.AppKey("port", Bound)
SESSION = web.RequestKey("session", Session)
OPEN_PATHS = frozenset({"/login", "/static/ui.css"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it a form POST says `Origin: null`, and the guard refuses that.
    # Other sites never see a URL of the page (the login link carries its token in one).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def own_hosts(port: int) -> frozenset[str]:
    return frozenset({f"localhost:{port}", f"127.0.0.1:{port}"})


def refusal(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=f"blindkey ui: {text}\n", headers=HEADERS)


def session_of(request: web.Request) -> Session:
    return request[SESSION]


def _foreign(request: web.Request) -> str | None:
    """Why the request comes from somewhere else than this page (None: it does not)."""
    host = request.headers.get("Host", "")
    if host not in own_hosts(request.app[PORT].port):
        return f"foreign Host {host[:80]!r} refused (open the link blindkey ui printed)"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"http://{host}":
        return f"foreign Origin {origin[:80]!r} refused"
    if request.headers.get("Sec-Fetch-Site", "none") not in ("same-origin", "none"):
        return "a request from another site is refused"
    return None


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    why = _foreign(request)
    if why is not None:
        return refusal(403, why)
    if request.path not in OPEN_PATHS:
        session = request.app[SESSIONS].find(request.cookies.get(COOKIE))
        if session is None:
            return refusal(
                401, "no session: open the one-time login link `blindkey ui` printed (run it "
                "again for a new one)"
            )  # fmt: skip
        if request.method == "POST":
            given = request.headers.get("X-CSRF-Token")
            if given is None and request.content_type == "application/x-www-form-urlencoded":
                given = (await request.post()).get("csrf")  # type: ignore[assignment]
            if not session.csrf_matches(given if isinstance(given, str) else None):
                return refusal(403, "missing or wrong CSRF token: reload the page")
        request[SESSION] = session
    response = await handler(request)
    if not response.prepared:  # a stream (SSE) sets them itself before it starts
        response.headers.update(HEADERS)
    return response
