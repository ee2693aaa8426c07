"""Approvers are told: for each new request, held call and lockout, a desktop notification
(notify-send on Linux, osascript on macOS, where present) and a webhook POST ([notify]).

Delivery is the broker's background work and never a call's: `offer` (an events.py
subscriber) only puts the event in a bounded queue; a few worker tasks deliver it with a
timeout per attempt and, for the webhook, a few attempts with backoff. A notice that
cannot be delivered (refused, timed out, queue full) is an audit record `notify_failed`
and a line in the broker's log: the audit because an approver who was not told is part of
what happened to a request, and the log alone is lost when the proxy that spawned the
broker goes. Neither names the webhook's URL past its origin (a Slack or ntfy URL is
itself a credential).

The webhook is trusted config, like the rest of the broker's config.toml, not an
allowlist entry: it receives only the fields of WEBHOOK_FIELDS (names an agent already
knows, never a value), and an allowlist entry would let agents send secrets to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from blindkey.audit.events import append_event
from blindkey.broker.approvals.events import NOTICES, ApprovalEvents, Event
from blindkey.config.outputs import NotifySettings

log = logging.getLogger("blindkey.broker")

WEBHOOK_FIELDS = ("event", "approval_id", "agent", "secret", "host", "method", "path", "approve")
QUEUE_SIZE = 256
WORKERS = 4
TIMEOUT = 5.0  # per attempt, and per desktop notification
ATTEMPTS = 3
BACKOFF = 0.5  # before the 2nd attempt; doubled before each next one
Record = Callable[[Mapping[str, Any]], Awaitable[None]]


def notice(event: Event) -> dict[str, Any]:
    """The webhook's body: these fields and no other (a lockout names none of a request's)."""
    approval_id = event.get("approval_id")
    fields = {name: event.get(name) for name in WEBHOOK_FIELDS}
    fields["approve"] = None if approval_id is None else f"blindkey approve --request {approval_id}"
    return fields


def headline(fields: Mapping[str, Any]) -> tuple[str, str]:
    """(title, body) said to a person, from the webhook's fields only."""
    if fields["event"] == "locked_out":
        return (
            "blindkey: an approver is locked out",
            "5 wrong codes within 5 minutes: their codes are refused for 5 minutes",
        )
    waits = "waits now" if fields["event"] == "held" else "asks"
    title = f"blindkey: agent {fields['agent']} {waits} for {fields['secret']}"
    body = f"{fields['method']} {fields['host']}{fields['path']}\napprove: {fields['approve']}"
    return title, body


def webhook_body(fields: Mapping[str, Any], style: str) -> dict[str, Any]:
    if style == "slack":
        title, body = headline(fields)
        return {"text": f"{title}\n{body}"}
    return dict(fields)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def desktop_command(title: str, body: str) -> list[str] | None:
    """The command that shows a notification here, or None where there is none."""
    if sys.platform == "darwin":
        osascript = shutil.which("osascript")
        if osascript is None:
            return None
        # The texts are arguments, never script source: a path cannot inject AppleScript.
        script = "on run argv\ndisplay notification (item 2 of argv) with title (item 1 of argv)"
        return [osascript, "-e", script + "\nend run", title, body]
    notify_send = shutil.which("notify-send")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    bus = os.environ.get("DBUS_SESSION_BUS_ADDRESS") or (runtime and Path(runtime, "bus").exists())
    if notify_send is None or not bus:
        return None
    # Bodies may be markup to the notification daemon; `--` ends the options (a path
    # could start with "-").
    return [
        notify_send, "--app-name=blindkey", "--urgency=critical", "--",
        html.escape(title, quote=False), html.escape(body, quote=False),
    ]  # fmt: skip


class Undelivered(Exception):
    """Why a notice did not arrive (said without the webhook's URL); `retry`: whether
    another attempt may fare better (an error status, a timeout, no connection)."""

    def __init__(self, why: str, *, retry: bool = True) -> None:
        super().__init__(why)
        self.retry = retry


class ApproverNotifier:
    def __init__(
        self,
        settings: Callable[[], NotifySettings],
        record: Record,
        *,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        timeout: float = TIMEOUT,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.settings = settings
        self.record = record
        self.attempts, self.backoff, self.timeout = attempts, backoff, timeout
        self.queue: asyncio.Queue[tuple[Event, NotifySettings]] = asyncio.Queue(queue_size)
        self.dropped = 0
        self._session: Any = None

    def offer(self, event: Event) -> None:
        """An approvals event (events.py subscriber): queued if it is told, never waited on."""
        if event["event"] not in NOTICES:
            return
        settings = self.settings()
        if not (settings.desktop or settings.webhook):
            return
        try:
            self.queue.put_nowait((event, settings))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Deliver until cancelled."""
        workers = [
            asyncio.create_task(self._work(), name=f"broker-notify-{n}") for n in range(WORKERS)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            if self._session is not None:
                with contextlib.suppress(Exception):
                    await self._session.close()

    async def _work(self) -> None:
        while True:
            event, settings = await self.queue.get()
            if self.dropped:
                dropped, self.dropped = self.dropped, 0
                await self._failed("queue", event, f"queue full: {dropped} notice(s) dropped", 0)
            fields = notice(event)
            jobs = []
            if settings.desktop:
                jobs.append(self._desktop(fields, event))
            if settings.webhook:
                jobs.append(self._webhook(fields, event, settings))
            await asyncio.gather(*jobs)

    async def _desktop(self, fields: Mapping[str, Any], event: Event) -> None:
        command = desktop_command(*headline(fields))
        if command is None:
            return  # nothing here shows notifications ("where present")
        try:
            await self._run(command)
        except Undelivered as exc:
            await self._failed("desktop", event, str(exc), 1)

    async def _run(self, command: list[str]) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise Undelivered(f"{Path(command[0]).name}: {exc.strerror}") from None
        try:
            _, err = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            name = Path(command[0]).name
            raise Undelivered(f"{name} gave no answer in {self.timeout:g}s") from None
        if process.returncode != 0:
            said = err.decode(errors="replace").strip().splitlines()[:1]
            raise Undelivered(f"{Path(command[0]).name} failed: {' '.join(said)[:200]}")

    async def _webhook(
        self, fields: Mapping[str, Any], event: Event, settings: NotifySettings
    ) -> None:
        body = webhook_body(fields, settings.format)
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                await self._post(settings.webhook, body)
                return
            except Undelivered as exc:
                if not exc.retry or attempt == self.attempts:
                    why = f"{origin_of(settings.webhook)}: {exc}"
                    await self._failed("webhook", event, why, attempt)
                    return
            await asyncio.sleep(delay)
            delay *= 2

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        import aiohttp  # only a broker with a webhook loads the HTTP client

        if self._session is None:
            # Not the caller's proxy settings, cookies or redirects: this URL and only it.
            self._session = aiohttp.ClientSession(
                trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self._session.post(
                url, json=body, timeout=timeout, allow_redirects=False
            ) as answer:
                status = answer.status
        except TimeoutError:
            raise Undelivered(f"no answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise Undelivered(f"cannot reach it ({type(exc).__name__})") from None
        if status >= 500 or status in (408, 429):
            raise Undelivered(f"answered {status}")
        if not 200 <= status < 300:
            raise Undelivered(f"refused: answered {status}", retry=False)

    async def _failed(self, channel: str, event: Event, reason: str, attempts: int) -> None:
        log.warning("approver notice (%s) not delivered: %s", channel, reason)
        fields = {
            "channel": channel,
            "notice": event["event"],
            "approval_id": event.get("approval_id"),
            "reason": reason,
            "attempts": attempts,
        }
        try:
            await self.record(fields)
        except Exception as exc:  # the audit refused: the log line above is what is left
            log.error("cannot record an undelivered approver notice: %s", exc)


async def tell_approvers(
    events: ApprovalEvents, settings: Callable[[], NotifySettings], audit_dir: Path
) -> None:
    """The broker's notifier, until cancelled: subscribed to `events`, reading [notify]
    from `settings` at each event (a reload applies to the next one)."""

    async def record(fields: Mapping[str, Any]) -> None:
        # The audit fsyncs: off the broker's loop, which answers the proxy's calls.
        await asyncio.to_thread(append_event, audit_dir, "notify_failed", fields)

    notifier = ApproverNotifier(settings, record)
    stop = events.subscribe(notifier.offer)
    try:
        await notifier.run()
    finally:
        stop()
