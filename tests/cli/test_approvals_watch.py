"""`blindkey approvals watch` as a process of its own, against a real proxy and its broker
subprocess: through pipes (line mode, --json) and through a pty (the live screen). It is
told of each request as it happens and approves and denies with the same rules as
`approve --request` and `deny`: codes, 2-of-2, the lockout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson

from tests.approvals_helpers import Approver, acli, enrol
from tests.conftest import ROOT
from tests.proxy.conftest import SECRET, Env, set_secret_policy


class Watch:
    """The command with its stdin and stdout on pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen: list[bytes] = []

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), 15)
        assert raw, "approvals watch ended"
        self.seen.append(raw)
        found: dict[str, Any] = orjson.loads(raw)
        return found

    async def until(self, kind: str) -> dict[str, Any]:
        while True:
            found = await self.line()
            if found["event"] == kind:
                return found

    async def type(self, text: str) -> dict[str, Any]:
        """A command; its answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()
        return await self.until("answer")


@contextlib.asynccontextmanager
async def watching(env: Env, *args: str) -> AsyncIterator[Watch]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "approvals", "watch", "--json", *args,
        cwd=ROOT, env={**os.environ, "BLINDKEY_HOME": str(env.paths.config_dir)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Watch(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _gate(env: Env, approvals: int = 1) -> Approver:
    approver = await asyncio.to_thread(enrol, "alice")
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted", approvals=approvals)
    await env.server.reload()
    return approver


async def _ask(env: Env, path: str, name: str = "GITHUB_TOKEN") -> str:
    status, _, body = await env.call(headers=env.headers(path, X_AS_Inject_Bearer=name))
    assert status == 403, body
    return str(orjson.loads(body)["approval_id"])


async def test_watch_lists_approves_and_denies_through_pipes(env: Env) -> None:
    alice = await _gate(env)
    set_secret_policy(env.paths, "STRIPE_KEY", tier="restricted")
    await env.server.reload()
    first = await _ask(env, "/repos/first")
    async with watching(env) as watch:
        listed = await watch.line()  # what waited before it started
        assert (listed["event"], listed["approval_id"], listed["path"]) == (
            "listed", first, "/repos/first",
        )  # fmt: skip
        second = await _ask(env, "/charges", "STRIPE_KEY")
        told = await watch.until("pending")
        assert (told["approval_id"], told["agent"], told["secret"], told["held"]) == (
            second, "tester", "STRIPE_KEY", False,
        )  # fmt: skip
        answer = await watch.type("approve 1 000000")
        assert answer["ok"] is False and "wrong code for alice" in answer["message"]
        answer = await watch.type(f"approve {first} {alice.code()}")
        assert answer["ok"] is True and f"{first}: GITHUB_TOKEN granted for" in answer["message"]
        assert (await watch.until("approved"))["approval_id"] == first
        # The second request's call now waits; denied from the watch by its number (now 1).
        headers = env.headers("/charges", X_AS_Inject_Bearer="STRIPE_KEY")
        headers["X-AS-Wait-Approval"] = "30"
        held = asyncio.create_task(env.call(headers=headers), name="held-call")
        assert (await watch.until("held"))["approval_id"] == second
        assert (await watch.type("deny 1"))["ok"] is True
        assert (await watch.until("denied"))["approval_id"] == second
        status, _, body = await asyncio.wait_for(held, 5)
        assert (status, orjson.loads(body)["error"]) == (403, "approval_denied")
        assert watch.process.stdin is not None
        watch.process.stdin.write(b"quit\n")
        assert await asyncio.wait_for(watch.process.wait(), 10) == 0
    assert all(SECRET.encode() not in raw for raw in watch.seen)


async def test_two_of_two_and_the_lockout_hold_in_the_watch(env: Env) -> None:
    alice = await _gate(env, approvals=2)
    # Recovery codes where alice would need a third code within one 30 s step.
    bob = await asyncio.to_thread(enrol, "bob", "--by", "alice", "--code", alice.recovery[0])
    set_secret_policy(env.paths, "STRIPE_KEY", tier="restricted")
    await env.server.reload()
    request = await _ask(env, "/repos/x")
    async with watching(env, "--approver", "alice") as watch:
        await watch.until("listed")
        answer = await watch.type(f"approve 1 {alice.code()}")
        assert answer["message"] == f"{request}: approved by alice; 1 more approver(s) needed"
        # alice's approval again counts once, as on the command line.
        answer = await watch.type(f"approve 1 {alice.recovery[1]}")
        assert answer["ok"] is False and "alice has already approved" in answer["message"]
        answer = await watch.type(f"approve 1 {bob.code()} bob")
        assert answer["ok"] is True and "granted" in answer["message"]
        await watch.until("approved")
        status, _, body = await env.call(
            headers=env.headers("/repos/x", X_AS_Inject_Bearer="GITHUB_TOKEN")
        )
        assert status == 200, body
        await _ask(env, "/charges", "STRIPE_KEY")
        await watch.until("pending")
        answers = [await watch.type("approve 1 000000") for _ in range(5)]
        assert all(a["ok"] is False for a in answers)
        assert "alice is locked out" in answers[-1]["message"]
        assert (await watch.until("locked_out"))["approver"] == "alice"
    _, out, _ = await acli("approvals", "list", "--json")
    assert [r["secret"] for r in json.loads(out)] == ["STRIPE_KEY"]  # still waiting


async def test_without_input_it_keeps_telling_in_plain_lines(env: Env) -> None:
    await _gate(env)
    before = await _ask(env, "/repos/before")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "approvals", "watch",
        cwd=ROOT, env={**os.environ, "BLINDKEY_HOME": str(env.paths.config_dir)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        destination = f"http://127.0.0.1:{env.upstream_port}"
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        assert line.split(" ", 1)[1] == (
            f"waiting {before}: tester GET {destination}/repos/before with GITHUB_TOKEN\n"
        )
        # Its input ended at once; a request made after is still told.
        for path in ("/repos/a", "/repos/b"):
            approval_id = await _ask(env, path)
            line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
            assert line.split(" ", 1)[1] == (
                f"asks {approval_id}: tester GET {destination}{path} with GITHUB_TOKEN\n"
            )
    finally:
        process.kill()
        await process.wait()
