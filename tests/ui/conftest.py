"""`blindkey ui` as a user runs it (a subprocess printing its one-time link), a real broker
and proxy to make pending approvals, and headless Chromium driven over DevTools."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from blindkey.config.paths import Paths
from tests.conftest import ROOT
from tests.e2e.chromium import Chromium, Tab
from tests.proxy.conftest import Env, set_secret_policy

LINK = re.compile(rb"http://localhost:([0-9]+)/login\?token=[A-Za-z0-9_-]+")
# Pages of other sites resolve to 127.0.0.1; nothing else resolves at all.
RESOLVER_RULES = (
    "MAP evil.test 127.0.0.1",
    "MAP rebind.test 127.0.0.1",
    "MAP * ~NOTFOUND",
    "EXCLUDE 127.0.0.1",
    "EXCLUDE localhost",
)


@dataclass
class Ui:
    process: asyncio.subprocess.Process
    port: int
    login: str

    @property
    def base(self) -> str:
        return f"http://localhost:{self.port}"


@contextlib.asynccontextmanager
async def run_ui(home: Paths) -> AsyncIterator[Ui]:
    env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "ui", "--no-open", "--port", "0",
        stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            while not (found := LINK.search(await process.stdout.readline())):
                assert process.returncode is None, "blindkey ui exited before its link"
        yield Ui(process, int(found.group(1)), found.group(0).decode())
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await process.wait()


@pytest.fixture
async def ui(home: Paths) -> AsyncIterator[Ui]:
    async with run_ui(home) as running:
        yield running


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    async with Chromium.launch(tmp_path / "chromium", RESOLVER_RULES) as running:
        yield running


async def run(tab: Tab, expression: str) -> object:
    """`expression`'s value in the page, a promise awaited, as if the user clicked (WebAuthn
    and form submission get a user gesture)."""
    result = await tab.send(
        "Runtime.evaluate",
        {"expression": expression, "awaitPromise": True, "returnByValue": True,
         "userGesture": True},
    )  # fmt: skip
    assert "exceptionDetails" not in result, result["exceptionDetails"]
    return result["result"].get("value")


async def navigate(tab: Tab, action: str) -> None:
    """Run `action` (a form submission, a click) and wait for the page it loads."""
    loaded = tab.expect("Page.loadEventFired")
    await run(tab, action)
    async with asyncio.timeout(15):
        await loaded


# The next message the page shows (#messages), as "kind: text".
NEXT_MESSAGE = """
new Promise((resolve) => {
  const box = document.getElementById("messages");
  const seen = box.children.length;
  const done = () => {
    if (box.children.length > seen) {
      const line = box.lastElementChild;
      resolve(line.className + ": " + line.textContent);
      return true;
    }
    return false;
  };
  new MutationObserver(done).observe(box, {childList: true});
})
"""


async def click_for_message(tab: Tab, action: str) -> str:
    """Do `action` in the page and return the message it leads to."""
    waiting = await tab.send(
        "Runtime.evaluate", {"expression": f"window.nextMessage = {NEXT_MESSAGE}; 0"}
    )
    assert "exceptionDetails" not in waiting
    await run(tab, action)
    async with asyncio.timeout(15):
        return str(await run(tab, "window.nextMessage"))


async def gated_call(env: Env, secret: str = "GITHUB_TOKEN") -> str:  # noqa: S107 (a name)
    """A call that needs a grant of `secret`: the id of the pending request it makes."""
    set_secret_policy(env.paths, secret, tier="restricted")
    await env.server.reload()
    headers = env.headers("/echo", X_AS_Inject_Bearer=secret)
    status, _, body = await env.call(headers=headers)
    error = orjson.loads(body)
    assert status == 403 and error["error"] == "approval_required", body
    return str(error["approval_id"])


async def call_status(env: Env, secret: str = "GITHUB_TOKEN") -> int:  # noqa: S107 (a name)
    status, _, _ = await env.call(headers=env.headers("/echo", X_AS_Inject_Bearer=secret))
    return status
