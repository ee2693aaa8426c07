"""The notifier's bounds, in-process against a real receiver that never answers: a notice
waits at most its timeout per attempt, the queue is bounded, and what it had to drop is
on the record once it has room again. Offering a notice never waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web

from blindkey.broker.approvals.notify_approver import ApproverNotifier
from blindkey.config.outputs import NotifySettings
from blindkey.config.paths import Paths
from tests.approvals_helpers import cli
from tests.broker.approvals.watch_helpers import eventually


@contextlib.asynccontextmanager
async def silent_receiver() -> AsyncIterator[tuple[str, list[int], asyncio.Event]]:
    """A URL whose server takes each POST and answers only once released."""
    arrived: list[int] = []
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.append(1)
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", arrived, release
    finally:
        release.set()
        await runner.cleanup()


def _event(n: int) -> dict[str, Any]:
    return {"event": "pending", "ts": "", "approval_id": f"ap_{n:016x}", "agent": "a",
            "secret": "S", "host": "h", "method": "GET", "path": "/"}  # fmt: skip


async def test_timeouts_and_a_full_queue_are_recorded_and_never_waited_on() -> None:
    records: list[Mapping[str, Any]] = []

    async def record(fields: Mapping[str, Any]) -> None:
        records.append(fields)

    async with silent_receiver() as (url, arrived, _):
        settings = NotifySettings(desktop=False, webhook=url)
        notifier = ApproverNotifier(
            lambda: settings, record, attempts=2, backoff=0.01, timeout=0.5, queue_size=2
        )
        runner = asyncio.create_task(notifier.run(), name="notifier-under-test")
        # 4 workers take one notice each and wait on the receiver...
        for n in range(4):
            notifier.offer(_event(n))
            await eventually(lambda n=n: len(arrived) == n + 1)
        # ... so of 10 more, 2 fit in the queue and 8 are dropped, and none is waited on.
        started = time.perf_counter()
        for n in range(4, 14):
            notifier.offer(_event(n))
        offered = time.perf_counter() - started
        assert notifier.queue.qsize() == 2 and notifier.dropped == 8
        await eventually(lambda: len(records) >= 5, 10)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    timeouts = [r for r in records if r["channel"] == "webhook"]
    assert {r["reason"] for r in timeouts} == {
        f"{url.removesuffix('/hook')}: no answer within 0.5s"
    }
    assert all(r["attempts"] == 2 for r in timeouts)
    (dropped,) = [r for r in records if r["channel"] == "queue"]
    assert dropped["reason"] == "queue full: 8 notice(s) dropped"
    print(f"10 offers: {offered * 1e6:.0f} us in all")
    assert offered < 0.01


@pytest.mark.parametrize(
    ("webhook", "said"),
    [
        ("ftp://example.com/x", "an absolute http(s) URL is required"),
        ("https:///no-host", "an absolute http(s) URL is required"),
        ("http://h:99999/", "not a URL"),
    ],
)
def test_a_webhook_that_is_no_http_url_is_refused(home: Paths, webhook: str, said: str) -> None:
    # By hand, as a person edits it (the CLI's own edits refuse to write it).
    text = home.config_file.read_text()
    home.config_file.write_text(text.replace('webhook = ""', f'webhook = "{webhook}"', 1))
    code, _, err = cli("config", "check")
    assert code == 1 and "webhook" in err and said in err, err
