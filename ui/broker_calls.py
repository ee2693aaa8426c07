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
from collections.abc import AsyncIterator
from typing import Any

from blindkey.broker.agents import AgentStore
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

# How often the pending list is asked for while a page shows it; see pending_changes.
PENDING_INTERVAL = 1.0


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

    Asks the broker every PENDING_INTERVAL (the broker keeps them in memory; no file is
    read). The one place to swap for the broker's approvals event stream once it exists:
    callers only see a new list when something changed."""
    last: list[str] | None = None
    while True:
        rows: list[dict[str, Any]] = []
        with contextlib.suppress(BlindkeyError):  # a broker restarting: the next ask says
            rows = await approvals(paths, "requests")
        # Ages tick every second: a change is a request that came or went.
        ids = [row["id"] for row in rows]
        if ids != last:
            last = ids
            yield rows
        await asyncio.sleep(PENDING_INTERVAL)
