"""Audit shipping to Debian's rsyslogd over TCP and TLS: every record once, in order, the
line as chained; through an outage of the receiver in the middle of calls."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from blindkey.audit.ship.cursor import cursor_file, load_cursor
from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.audit.ship_receivers import Rsyslog, audit_lines, wait_for
from tests.proxy.conftest import Env, open_env


def shipping_to(url: str, ca_file: str = "") -> Any:
    def configure(document: Any) -> None:
        table = toml_table(document, "audit", "ship")
        table["syslog"] = url
        if ca_file:
            table["ca_file"] = ca_file

    return configure


async def calls(env: Env, count: int) -> None:
    for index in range(count):
        # Allowed and refused calls alike: a refusal is a record too (and a warning).
        target = env.base + "/echo" if index % 3 else "http://not-allowed.example/x"
        status, _, _ = await env.call(headers=env.to(target))
        assert status in (200, 400)  # 400: not in the allowlist


def messages_match_the_audit(receiver: Rsyslog, audit_dir: Path) -> None:
    lines = audit_lines(audit_dir)
    received = receiver.received()
    assert [m[6].encode() for m in received] == lines  # once each, in order, as chained
    for message, line in zip(received, lines, strict=True):
        record = orjson.loads(line)
        facility, severity, app, procid, msgid, data, _ = message
        assert (facility, app, msgid) == ("13", "blindkey", record["event"])
        assert severity == ("4" if record.get("decision") == "blocked" else "6")
        assert procid.isdigit()
        assert data == f'[meta sequenceId="{record["seq"]}"]'


def shipped(home: Paths, url: str) -> int:
    return load_cursor(cursor_file(home.audit_dir, "syslog"), url).at.seq


def everything_received(receiver: Rsyslog, audit_dir: Path) -> bool:
    return len(receiver.received()) >= len(audit_lines(audit_dir))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_records_reach_rsyslog_once_each_in_order(
    home: Paths, tmp_path: Path, tls: bool
) -> None:
    """Over TCP, and over TLS verified against the configured CA file."""
    receiver = Rsyslog(tmp_path / "rsyslog", tls=trustme.CA() if tls else None)
    await receiver.start()
    try:
        ca_file = str(receiver.workdir / "ca.pem") if tls else ""
        async with open_env(home, shipping_to(receiver.url, ca_file)) as env:
            await calls(env, 30)
            await wait_for(lambda: everything_received(receiver, home.audit_dir), what="records")
        messages_match_the_audit(receiver, home.audit_dir)
    finally:
        await receiver.stop()


async def test_a_tls_receiver_the_system_store_does_not_trust_gets_nothing(
    home: Paths, tmp_path: Path
) -> None:
    receiver = Rsyslog(tmp_path / "rsyslog", tls=trustme.CA())
    await receiver.start()
    try:
        async with open_env(home, shipping_to(receiver.url)) as env:
            await calls(env, 3)
            path = cursor_file(home.audit_dir, "syslog")
            await wait_for(lambda: load_cursor(path, receiver.url).error is not None, what="error")
            error = load_cursor(path, receiver.url).error
            assert error is not None and "certificate not trusted" in error
            assert load_cursor(path, receiver.url).at.seq == 0
        assert receiver.received() == []
    finally:
        await receiver.stop()


class Load:
    """Calls one after another until `count`, which a test can pause and resume."""

    def __init__(self, env: Env, count: int) -> None:
        self.running = asyncio.Event()
        self.running.set()
        self.paused = asyncio.Event()
        self.task = asyncio.create_task(self._calls(env, count), name="load")

    async def _calls(self, env: Env, count: int) -> None:
        for _ in range(count):
            if not self.running.is_set():
                self.paused.set()
                await self.running.wait()
                self.paused.clear()
            await calls(env, 1)

    async def pause(self) -> None:
        self.running.clear()
        await self.paused.wait()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_an_outage_of_rsyslog_mid_load_loses_and_repeats_nothing(
    home: Paths, tmp_path: Path, tls: bool
) -> None:
    """rsyslogd is frozen, sent a batch (in its socket, every byte acknowledged by its
    kernel: a sender that counted that as delivered would lose it), killed, and started
    again, while calls go on. It is frozen at a moment it holds nothing half-stored: a
    receiver that dies between reading a batch and storing it loses it, and syslog has
    no acknowledgement to tell the sender so (SECURITY.md)."""
    receiver = Rsyslog(tmp_path / "rsyslog", tls=trustme.CA() if tls else None)
    await receiver.start()
    ca_file = str(receiver.workdir / "ca.pem") if tls else ""
    try:
        async with open_env(home, shipping_to(receiver.url, ca_file)) as env:
            load = Load(env, 800)
            await wait_for(lambda: len(receiver.received()) >= 50, what="the first records")
            await load.pause()
            lines = len(audit_lines(home.audit_dir))
            await wait_for(lambda: shipped(home, receiver.url) == lines, what="confirmed")
            assert receiver.process is not None
            receiver.process.send_signal(signal.SIGSTOP)
            load.running.set()
            await wait_for(lambda: receiver.unread() > 0, what="a batch sent and not read")
            await receiver.kill()
            await wait_for(lambda: len(audit_lines(home.audit_dir)) >= lines + 50, what="calls")
            await receiver.start()  # the same port
            await load.task
            await wait_for(lambda: everything_received(receiver, home.audit_dir), what="records")
        messages_match_the_audit(receiver, home.audit_dir)
    finally:
        await receiver.stop()
