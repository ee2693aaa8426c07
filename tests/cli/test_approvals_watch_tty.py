"""`blindkey approvals watch` on a terminal (a pty): the list redrawn in place as the
broker tells of requests, ages ticking, a code typed shown as stars, approve and deny by
number, and the terminal given back as it was. A real proxy and its broker subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import struct
import sys
import termios
from collections.abc import AsyncIterator

import orjson

from tests.approvals_helpers import enrol
from tests.conftest import ROOT
from tests.proxy.conftest import Env, set_secret_policy

ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")


class Terminal:
    """The pty's other side: what the command drew, and keys typed to it."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.output = b""
        self.changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # the command exited: the pty has no other side
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        self.output += data
        self.changed.set()

    @property
    def screen(self) -> str:
        """The last frame drawn, without its escape sequences."""
        last = self.output.rsplit(b"\x1b[H", 1)[-1]
        return ANSI.sub(b"", last).decode(errors="replace")

    async def shows(self, text: str) -> str:
        async with asyncio.timeout(15):
            while text not in self.screen:
                self.changed.clear()
                await self.changed.wait()
        return self.screen

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())


@contextlib.asynccontextmanager
async def on_a_terminal(
    env: Env,
) -> AsyncIterator[tuple[Terminal, asyncio.subprocess.Process, int]]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "approvals", "watch",
        cwd=ROOT, env={**os.environ, "BLINDKEY_HOME": str(env.paths.config_dir)},
        stdin=slave, stdout=slave, stderr=slave,
    )  # fmt: skip
    terminal = Terminal(master)
    try:
        yield terminal, process, slave
    finally:
        asyncio.get_running_loop().remove_reader(master)
        if process.returncode is None:
            process.kill()
        await process.wait()
        os.close(slave)
        os.close(master)


async def _ask(env: Env, path: str, name: str) -> str:
    status, _, body = await env.call(headers=env.headers(path, X_AS_Inject_Bearer=name))
    assert status == 403, body
    return str(orjson.loads(body)["approval_id"])


async def test_the_live_screen_approves_and_denies(env: Env) -> None:
    approver = await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    set_secret_policy(env.paths, "STRIPE_KEY", tier="restricted")
    await env.server.reload()
    first = await _ask(env, "/repos/x", "GITHUB_TOKEN")
    async with on_a_terminal(env) as (terminal, process, slave):
        await terminal.shows("1 waiting")
        second = await _ask(env, "/charges", "STRIPE_KEY")
        screen = await terminal.shows("2 waiting")
        assert first in screen and second in screen and "tester" in screen
        # How long each has waited, counted on the screen (no disk read, no new event).
        await terminal.shows(" 1s")
        code = approver.code()
        terminal.type(f"approve 1 {code}")
        screen = await terminal.shows("> approve 1 ******")
        assert f"approve 1 {code}" not in screen
        terminal.type("\r")
        screen = await terminal.shows("1 waiting")
        assert f"{first}: GITHUB_TOKEN granted for" in screen
        (row,) = [line for line in screen.splitlines() if line.startswith("1 ")]
        assert second in row
        terminal.type("deny 1\r")
        await terminal.shows("0 waiting")
        terminal.type("q\r")
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert f"approve 1 {code}".encode() not in terminal.output
        after = termios.tcgetattr(slave)[3]
    assert after & termios.ECHO and after & termios.ICANON
