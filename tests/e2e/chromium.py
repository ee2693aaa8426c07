"""Headless Chromium driven over the DevTools protocol (CDP), for pages that attack the proxy.

CDP rather than --dump-dom: a test awaits the page's own promise instead of guessing a
virtual-time budget, and the Fetch domain can hand the browser a document for an origin
whose server is the proxy itself (the state a DNS-rebinding page is in).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs the tests as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Chromium's Local Network Access checks stop a rebound page's requests to 127.0.0.1
    # before they leave the browser. Firefox and Safari have no such check and blindkey must
    # not depend on one: off, the requests reach the proxy and its gate is what is tested.
    "--disable-features=LocalNetworkAccessChecks",
)
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class DevToolsError(Exception):
    pass


class Tab:
    """One page target, attached over the browser's connection (flattened session)."""

    def __init__(self, browser: Chromium, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.call(method, params, self.session_id)

    def expect(self, event: str) -> asyncio.Future[dict[str, Any]]:
        """The next `event` of this tab; ask before doing what causes it."""
        return self.browser.expect(event, self.session_id)

    async def open(self, url: str, document: bytes | None = None) -> None:
        """Navigate to `url` and wait for its load event. With `document`, the browser gets
        those bytes as the page instead of asking `url`'s server; its later requests go out."""
        loaded = self.expect("Page.loadEventFired")
        paused = None
        if document is not None:
            paused = self.expect("Fetch.requestPaused")
            pattern = {"urlPattern": url, "resourceType": "Document"}
            await self.send("Fetch.enable", {"patterns": [pattern]})
        navigated = await self.browser.post("Page.navigate", {"url": url}, self.session_id)
        if paused is not None:
            request = await paused
            await self.send(
                "Fetch.fulfillRequest",
                {
                    "requestId": request["requestId"],
                    "responseCode": 200,
                    "responseHeaders": [{"name": "Content-Type", "value": "text/html"}],
                    "body": base64.b64encode(document or b"").decode(),
                },
            )
        result = await navigated
        if "errorText" in result:
            raise DevToolsError(f"{url}: {result['errorText']}")
        if paused is not None:
            await self.send("Fetch.disable")
        await loaded

    async def evaluate(self, expression: str) -> Any:
        """The value of `expression` in the page, a promise awaited."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            raise DevToolsError(str(result["exceptionDetails"]))
        return result["result"].get("value")


class Chromium:
    """A browser process and its DevTools connection."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        socket: aiohttp.ClientWebSocketResponse,
        stderr_tail: deque[str],
    ) -> None:
        self.process = process
        self.socket = socket
        self.stderr_tail = stderr_tail
        self.ids = itertools.count(1)
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.waiters: dict[tuple[str | None, str], list[asyncio.Future[dict[str, Any]]]] = {}
        self.reader = asyncio.create_task(self._read(), name="chromium-devtools-reader")

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path, resolver_rules: Iterable[str]) -> AsyncIterator[Chromium]:
        binary = shutil.which("chromium")
        if binary is None:
            raise DevToolsError("chromium is not installed (apt-get install chromium)")
        process = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--host-resolver-rules={', '.join(resolver_rules)}",
            "--remote-debugging-port=0",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its renderers and zygote go with it on kill
        )
        assert process.stderr is not None
        tail: deque[str] = deque(maxlen=40)
        drain: asyncio.Task[None] | None = None
        closed = False
        try:
            async with asyncio.timeout(START_TIMEOUT):
                url = await _devtools_url(process.stderr, tail)
            # Read stderr to its end, or a chatty Chromium blocks on a full pipe.
            drain = asyncio.create_task(_keep_tail(process.stderr, tail), name="chromium-stderr")
            async with aiohttp.ClientSession() as session:
                socket = await session.ws_connect(url, max_msg_size=0)
                browser = cls(process, socket, tail)
                try:
                    yield browser
                finally:
                    closed = await browser._close()
        finally:
            if closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            if drain is not None:
                await drain

    async def new_tab(self) -> Tab:
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        tab = Tab(self, attached["sessionId"])
        await tab.send("Page.enable")
        return tab

    async def post(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Send a command; the returned future is its result, awaited when the caller needs it
        (Page.navigate answers only after a paused request is fulfilled)."""
        message: dict[str, Any] = {"id": next(self.ids), "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.reader.done():
            raise DevToolsError(f"the browser is gone: {list(self.stderr_tail)}")
        self.replies[message["id"]] = reply
        await self.socket.send_str(orjson.dumps(message).decode())
        return reply

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        return await (await self.post(method, params, session_id))

    def expect(self, event: str, session_id: str | None) -> asyncio.Future[dict[str, Any]]:
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.setdefault((session_id, event), []).append(waiter)
        return waiter

    async def _read(self) -> None:
        try:
            async for frame in self.socket:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = orjson.loads(frame.data)
                if "id" in message:
                    reply = self.replies.pop(message["id"], None)
                    if reply is None or reply.done():
                        continue
                    if "error" in message:
                        reply.set_exception(DevToolsError(str(message["error"])))
                    else:
                        reply.set_result(message.get("result", {}))
                    continue
                key = (message.get("sessionId"), message["method"])
                waiting = self.waiters.get(key)
                if waiting:
                    waiter = waiting.pop(0)
                    if not waiter.done():
                        waiter.set_result(message.get("params", {}))
        finally:
            gone = DevToolsError(f"browser connection closed: {list(self.stderr_tail)}")
            for future in [*self.replies.values(), *itertools.chain(*self.waiters.values())]:
                if not future.done():
                    future.set_exception(gone)

    async def _close(self) -> bool:
        """Ask the browser to quit; True when it said it would."""
        try:
            await asyncio.wait_for(self.call("Browser.close"), STOP_TIMEOUT)
            closing = True
        except (DevToolsError, ConnectionError, TimeoutError):
            closing = False
        await self.socket.close()
        await self.reader
        return closing


async def _devtools_url(stderr: asyncio.StreamReader, tail: deque[str]) -> str:
    prefix = "DevTools listening on "
    while line := (await stderr.readline()).decode(errors="replace"):
        tail.append(line.rstrip())
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    raise DevToolsError(f"chromium exited before listening: {list(tail)}")


async def _keep_tail(stderr: asyncio.StreamReader, tail: deque[str]) -> None:
    while line := await stderr.readline():
        tail.append(line.decode(errors="replace").rstrip())
