"""What the page asks the broker, the way the CLI asks it: broker/approvals_link.py (the
running broker over its socket, from this user, with its permission and lockout rules;
the broker's files in-process when none runs). This process never holds a secret value:
nothing it calls returns one.

The link is synchronous (one short request each): run on a worker thread so the page's
other requests and streams go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from blindkey.broker.agents import AgentStore
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

# How often the pending list is asked for while no broker can be watched; see pending_changes.
PENDING_INTERVAL = 1.0
# How often the watching thread looks up from the stream to see if the page has gone.
WATCH_TICK = 1.0


async def approvals(paths: Paths, action: str, **params: Any) -> Any:
    """The approvals action's result; raises CodeRefused, CodeNeeded or BlindkeyError."""
    from blindkey.broker.approvals_link import call

    return await asyncio.to_thread(call, paths, action, **params)


async def agents(paths: Paths) -> list[dict[str, Any]]:
    """Agents as `agent list` reads them (names and dates; token hashes stay behind)."""

    def read() -> list[dict[str, Any]]:
        store = AgentStore(paths.agents_file, paths.lock_file)
        return [
            {"agent": a.name, "created": a.created, "revoked": a.revoked}
            for a in sorted(store.load().values(), key=lambda a: a.name)
        ]

    return await asyncio.to_thread(read)


async def pending_changes(paths: Paths) -> AsyncIterator[list[dict[str, Any]]]:
    """The pending requests now, then each time they change.

    Woken by the broker's approvals event stream (`approvals.watch`, broker/approvals/
    events.py): each event asks for the list again. With no broker to watch (none runs and
    the CLI reads its files in-process, or it is restarting) the list is asked for every
    PENDING_INTERVAL until a watch can start. Callers see a new list only when a request
    came or went."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Queue[bool] = asyncio.Queue()
    stop = threading.Event()
    watcher: threading.Thread | None = None
    last: list[str] | None = None
    try:
        while True:
            if watcher is None:
                watcher = threading.Thread(
                    target=_watch, args=(paths, loop, woken, stop), daemon=True
                )
                watcher.start()
            rows: list[dict[str, Any]] = []
            with contextlib.suppress(BlindkeyError):  # a broker restarting: the next ask says
                rows = await approvals(paths, "requests")
            ids = [row["id"] for row in rows]  # ages tick every second: not a change
            if ids != last:
                last = ids
                yield rows
            # An event wakes it. A watcher that ended (no broker, or it went away) says so once:
            # then ask again after an interval, and watch again.
            if not await woken.get():
                watcher = None
                await asyncio.sleep(PENDING_INTERVAL)
    finally:
        stop.set()


def _watch(
    paths: Paths, loop: asyncio.AbstractEventLoop, woken: asyncio.Queue[bool], stop: threading.Event
) -> None:
    """On a worker thread: wake the page's loop for each approvals event, until `stop` or the
    broker goes away (the page then asks on an interval and watches again)."""
    from blindkey.broker.approvals.events import WATCH_OP
    from blindkey.broker.link import NoAnswer, connect
    from blindkey.broker.protocol import BrokerUnavailable

    try:
        link = connect(paths, timeout=WATCH_TICK)
    except (BrokerUnavailable, BlindkeyError, OSError):
        with contextlib.suppress(RuntimeError):  # the page's loop closed meanwhile
            loop.call_soon_threadsafe(woken.put_nowait, False)
        return
    try:
        request_id = link.send(WATCH_OP)
        while not stop.is_set():
            try:
                frames = link.receive()
            except NoAnswer:
                continue  # nothing happened this tick: look at `stop` again
            if any(f.get("id") == request_id and "error" in f for f in frames):
                break  # not this user's to watch: asking says why
            if any(f.get("id") == request_id for f in frames):
                loop.call_soon_threadsafe(woken.put_nowait, True)
    except (BrokerUnavailable, BlindkeyError, OSError, RuntimeError):
        pass  # the broker went away, or the page's loop closed
    finally:
        link.close()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(woken.put_nowait, False)
