"""Shipping resumes where its cursor says: after blindkey restarts with records not yet
delivered, and across the audit's rotation, each record is delivered once, in order."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from blindkey.audit.ship.cursor import cursor_file, load_cursor
from blindkey.audit.ship.otlp import OtlpSink
from blindkey.audit.ship.shipper import Shipper
from blindkey.audit.store import AuditLog, rotated_files
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.proxy.server import ProxyServer
from tests.audit.records import make_record
from tests.audit.ship_receivers import OtlpReceiver, audit_lines, wait_for
from tests.audit.test_ship_otlp import all_received, shipping_to
from tests.audit.test_ship_syslog import calls
from tests.proxy.conftest import open_env


async def test_a_restart_of_blindkey_mid_shipping_resumes_without_loss_or_repeat(
    home: Paths,
) -> None:
    receiver = OtlpReceiver()
    await receiver.start()
    path = cursor_file(home.audit_dir, "otlp")
    try:
        async with open_env(home, shipping_to(receiver.url)) as env:
            await calls(env, 40)
            await wait_for(lambda: len(receiver.bodies()) >= 20, what="the first records")
            receiver.answer = 503  # what follows waits in the audit file
            await calls(env, 40)
        # Stopped with records written and not delivered.
        stopped_at = load_cursor(path, receiver.url).at.seq
        assert 20 <= stopped_at < len(audit_lines(home.audit_dir))
        receiver.answer = 200
        server = ProxyServer(home, load_settings(home.config_file), host="127.0.0.1", port=0)
        await server.start()
        try:
            await wait_for(lambda: all_received(receiver, home.audit_dir), what="the rest")
        finally:
            await server.stop()
        assert receiver.bodies() == audit_lines(home.audit_dir)
    finally:
        await receiver.stop()


def write(log: AuditLog, start: int, count: int) -> None:
    moment = datetime.now(UTC)
    for index in range(start, start + count, 10):
        log.append(make_record(f"r{n}", moment, note="x" * 300) for n in range(index, index + 10))


async def test_shipping_follows_rotation_and_a_restart_of_the_shipper(tmp_path: Path) -> None:
    audit_dir = tmp_path / "audit"
    log = AuditLog(audit_dir, rotate_bytes=16_000)  # a new file every ~20 records
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        first = Shipper("otlp", receiver.url, OtlpSink(receiver.url), audit_dir)
        first.start()
        write(log, 0, 300)
        first.wake()
        await wait_for(lambda: len(receiver.bodies()) >= 150, what="half")
        await asyncio.to_thread(first.stop)  # a restart: the next one reads the cursor
        write(log, 300, 300)
        second = Shipper("otlp", receiver.url, OtlpSink(receiver.url), audit_dir)
        second.start()
        second.wake()
        try:
            await wait_for(lambda: all_received(receiver, audit_dir), what="everything")
        finally:
            await asyncio.to_thread(second.stop)
        assert len(rotated_files(audit_dir)) >= 15
        assert receiver.bodies() == audit_lines(audit_dir)
    finally:
        log.close()
        await receiver.stop()
