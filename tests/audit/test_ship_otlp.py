"""Audit shipping as OTLP/HTTP logs, decoded by the official opentelemetry-proto messages:
each record once, in order, through a receiver that refuses (503) and one that is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.ship.cursor import cursor_file, load_cursor
from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.audit.ship_receivers import OtlpReceiver, audit_lines, wait_for
from tests.audit.test_ship_syslog import calls
from tests.proxy.conftest import open_env


def shipping_to(url: str) -> Any:
    def configure(document: Any) -> None:
        toml_table(document, "audit", "ship")["otlp"] = url

    return configure


def all_received(receiver: OtlpReceiver, audit_dir: Path) -> bool:
    return len(receiver.bodies()) >= len(audit_lines(audit_dir))


async def test_each_record_is_one_log_record_with_its_line_as_body(home: Paths) -> None:
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        async with open_env(home, shipping_to(receiver.url)) as env:
            await calls(env, 12)
            await wait_for(lambda: all_received(receiver, home.audit_dir), what="records")
        assert receiver.bodies() == audit_lines(home.audit_dir)
        message = receiver.requests[0]
        resource = {
            a.key: a.value.string_value for a in message.resource_logs[0].resource.attributes
        }
        assert resource["service.name"] == "blindkey"
        scope = message.resource_logs[0].scope_logs[0]
        assert scope.scope.name == "blindkey.audit"
        for log_record in scope.log_records:
            record = orjson.loads(log_record.body.string_value)
            attributes = {a.key: a.value for a in log_record.attributes}
            assert attributes["blindkey.seq"].int_value == record["seq"]
            assert attributes["blindkey.event"].string_value == record["event"]
            blocked = record.get("decision") == "blocked"
            assert log_record.severity_text == ("WARN" if blocked else "INFO")
            assert log_record.severity_number == (13 if blocked else 9)
            millis = log_record.time_unix_nano // 1_000_000
            rest = millis % 1000
            assert record["ts"].endswith(f".{rest:03d}Z")
            assert log_record.observed_time_unix_nano >= log_record.time_unix_nano
    finally:
        await receiver.stop()


async def test_an_otlp_outage_mid_load_loses_and_repeats_nothing(home: Paths) -> None:
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        async with open_env(home, shipping_to(receiver.url)) as env:
            load = asyncio.create_task(calls(env, 600), name="calls")
            await wait_for(lambda: len(receiver.bodies()) >= 30, what="the first records")
            receiver.answer = 503  # refuses: nothing of those batches counts as delivered
            refused_from = len(audit_lines(home.audit_dir))
            path = cursor_file(home.audit_dir, "otlp")
            await wait_for(
                lambda: "503" in (load_cursor(path, receiver.url).error or ""), what="503"
            )
            await receiver.stop()  # then gone: the port is closed
            await wait_for(
                lambda: len(audit_lines(home.audit_dir)) > refused_from + 50, what="calls"
            )
            receiver.answer = 200
            await receiver.start()
            await load
            await wait_for(lambda: all_received(receiver, home.audit_dir), what="records")
            cursor = load_cursor(path, receiver.url)
            assert cursor.error is None and cursor.at.seq == len(audit_lines(home.audit_dir))
        assert receiver.bodies() == audit_lines(home.audit_dir)
    finally:
        await receiver.stop()
