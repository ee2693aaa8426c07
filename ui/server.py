"""`blindkey ui`: the local page for approvers and whoever looks after blindkey.

It listens on 127.0.0.1 only and prints a one-time login link; everything it shows or does
goes through the broker like the CLI (broker_calls.py), and the page's guard (guard.py)
refuses other names, other origins and POSTs without the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import webbrowser
from collections.abc import Awaitable, Callable

from aiohttp import web

from blindkey.config.paths import Paths
from blindkey.ui import handlers, passkey_api
from blindkey.ui.guard import PORT, SESSIONS, Bound, guard
from blindkey.ui.session import LOGIN_TTL, Sessions

HOST = "127.0.0.1"
# Streams (live calls, pending list) never end by themselves: on shutdown they are cut
# after this, instead of aiohttp's minute-long wait for handlers.
SHUTDOWN_TIMEOUT = 1.0


def build_app(paths: Paths, sessions: Sessions, where: Bound) -> web.Application:
    app = web.Application(middlewares=[guard, handlers.failures], client_max_size=256 * 1024)
    app[handlers.PATHS] = paths
    app[SESSIONS] = sessions
    app[PORT] = where
    get, post = web.get, web.post
    app.add_routes([
        get("/login", handlers.login), get("/", handlers.home),
        get("/static/{name:ui\\.(css|js)}", handlers.static),
        get("/approvals", handlers.approvals), post("/approvals/approve", handlers.approve),
        post("/approvals/deny", handlers.deny),
        get("/grants", handlers.grants), post("/grants/revoke", handlers.revoke),
        get("/agents", handlers.agents), get("/calls", handlers.calls),
        get("/report", handlers.report), get("/changes", handlers.changes),
        get("/passkeys", handlers.passkeys),
        get("/events/calls", handlers.calls_events),
        get("/events/approvals", handlers.approvals_events),
        post("/api/passkeys/register/begin", passkey_api.register_begin),
        post("/api/passkeys/register/finish", passkey_api.register_finish),
        post("/api/passkeys/approve/begin", passkey_api.approve_begin),
        post("/api/passkeys/approve/finish", passkey_api.approve_finish),
    ])  # fmt: skip
    return app


async def start(paths: Paths, sessions: Sessions, port: int) -> tuple[web.AppRunner, int]:
    """The page listening on 127.0.0.1:`port` (0: any free port), and the port it got."""
    where = Bound()
    runner = web.AppRunner(
        build_app(paths, sessions, where), shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    where.port = runner.addresses[0][1]
    return runner, where.port


async def serve(
    paths: Paths,
    port: int,
    *,
    open_browser: bool = True,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
) -> None:
    sessions = Sessions()
    runner, bound = await start(paths, sessions, port)
    url = f"http://localhost:{bound}/login?token={sessions.login_token}"
    sys.stdout.write(
        f"blindkey ui on http://localhost:{bound}/ (127.0.0.1 only)\n"
        f"Open this link to log in; it works once, within {int(LOGIN_TTL)}s:\n{url}\n"
    )
    sys.stdout.flush()
    if open_browser:
        with contextlib.suppress(webbrowser.Error):
            await asyncio.to_thread(webbrowser.open, url)
    try:
        if shutdown_trigger is not None:
            await shutdown_trigger()
        else:
            await _signalled()
    finally:
        await runner.cleanup()


async def _signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
