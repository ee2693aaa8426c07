"""Approvers are told on the desktop: notify-send against a fake notification daemon
(tests/broker/notify_daemon.py, jeepney) on a private D-Bus session bus, driven by a real
proxy and its broker subprocess. A desktop that cannot show it is on the record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from blindkey.broker.approvals.notify_approver import desktop_command
from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.approvals_helpers import acli, audit_events, enrol
from tests.broker.approvals.watch_helpers import eventually
from tests.conftest import ROOT
from tests.proxy.conftest import SECRET, Env, open_env, set_secret_policy


@contextlib.asynccontextmanager
async def session_bus() -> AsyncIterator[str]:
    """A private session bus; its address."""
    bus = await asyncio.create_subprocess_exec(
        "dbus-daemon", "--session", "--nofork", "--print-address=1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert bus.stdout is not None
        address = (await asyncio.wait_for(bus.stdout.readline(), 10)).decode().strip()
        assert address.startswith("unix:"), address
        yield address
    finally:
        bus.terminate()
        await bus.wait()


@contextlib.asynccontextmanager
async def notification_daemon(address: str) -> AsyncIterator[asyncio.StreamReader]:
    """The fake daemon on `address`: a reader of the Notify calls it records."""
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.broker.notify_daemon",
        cwd=ROOT, env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": address},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert daemon.stdout is not None
        assert await asyncio.wait_for(daemon.stdout.readline(), 10) == b"READY\n"
        yield daemon.stdout
    finally:
        daemon.terminate()
        await daemon.wait()


def _desktop(document: Any) -> None:
    toml_table(document, "notify")["desktop"] = True


async def _gated_call(env: Env, path: str) -> None:
    await asyncio.to_thread(enrol)
    set_secret_policy(env.paths, "GITHUB_TOKEN", tier="restricted")
    await env.server.reload()
    status, _, _ = await env.call(headers=env.headers(path, X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert status == 403


async def test_a_request_and_a_lockout_are_shown_on_the_desktop(
    home: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with session_bus() as address, notification_daemon(address) as shown:
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)  # the broker inherits it
        async with open_env(home, configure=_desktop) as env:
            await _gated_call(env, "/-repos&x")
            notice = json.loads(await asyncio.wait_for(shown.readline(), 15))
            (pending,) = json.loads((await acli("approvals", "list", "--json"))[1])
            assert notice == {
                "app": "blindkey",
                "summary": "blindkey: agent tester asks for GITHUB_TOKEN",
                # Markup to the daemon, so escaped; a leading "-" is no option to notify-send.
                "body": f"GET 127.0.0.1/-repos&amp;x\n"
                f"approve: blindkey approve --request {pending['id']}",
                "urgency": 2,
                "timeout": -1,
            }
            for _ in range(5):
                assert (await acli("approve", "GITHUB_TOKEN", "--code", "000000"))[0] == 4
            notice = json.loads(await asyncio.wait_for(shown.readline(), 15))
            assert notice["summary"] == "blindkey: an approver is locked out"
            assert SECRET not in json.dumps(notice)
    assert not audit_events(home.audit_dir, "notify_failed")


async def test_a_desktop_that_shows_nothing_is_on_the_record(
    home: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with session_bus() as address:  # a bus, and no notification daemon on it
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
        async with open_env(home, configure=_desktop) as env:
            await _gated_call(env, "/repos/x")
            await eventually(lambda: bool(audit_events(home.audit_dir, "notify_failed")), 15)
    (failed,) = audit_events(home.audit_dir, "notify_failed")
    assert (failed["channel"], failed["notice"], failed["attempts"]) == ("desktop", "pending", 1)
    assert failed["reason"].startswith("notify-send failed")


def test_no_session_bus_is_no_desktop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert desktop_command("title", "body") is None
