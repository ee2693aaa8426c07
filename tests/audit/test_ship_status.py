"""`blindkey audit ship status`: the last seq a destination confirmed, its lag in records
and seconds, and the last error, as a table and as JSON."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from blindkey.audit.ship.cursor import cursor_file, load_cursor
from blindkey.audit.ship.otlp import OtlpSink
from blindkey.audit.ship.shipper import Shipper
from blindkey.audit.store import AuditLog
from blindkey.config.edit import edit_config, toml_table
from blindkey.config.paths import Paths
from tests.audit.records import make_record
from tests.audit.ship_receivers import OtlpReceiver, wait_for
from tests.conftest import RunCli


async def test_status_shows_the_seq_shipped_the_lag_and_the_last_error(
    home: Paths, run_cli: RunCli
) -> None:
    receiver = OtlpReceiver()
    await receiver.start()

    def configure(document: Any) -> None:
        toml_table(document, "audit", "ship")["otlp"] = receiver.url

    edit_config(home.config_file, home.lock_file, configure)
    log = AuditLog(home.audit_dir)
    shipper = Shipper("otlp", receiver.url, OtlpSink(receiver.url), home.audit_dir)
    try:
        log.append(make_record(f"r{n}", datetime.now(UTC)) for n in range(10))
        shipper.start()
        await wait_for(lambda: len(receiver.bodies()) == 10, what="ten records")
        receiver.answer = 503
        a_minute_ago = datetime.now(UTC) - timedelta(minutes=1)
        log.append(make_record(f"late{n}", a_minute_ago) for n in range(5))
        shipper.wake()
        path = cursor_file(home.audit_dir, "otlp")
        await wait_for(lambda: load_cursor(path, receiver.url).error is not None, what="error")
    finally:
        await asyncio.to_thread(shipper.stop)
        log.close()
        await receiver.stop()
    cli = await asyncio.to_thread(run_cli, "audit", "ship", "status", "--json")
    assert cli.returncode == 0, cli.stderr
    (otlp,) = orjson.loads(cli.stdout)
    assert (otlp["destination"], otlp["url"]) == ("otlp", receiver.url)
    assert (otlp["shipped_seq"], otlp["audit_seq"], otlp["lag_records"]) == (10, 15, 5)
    assert otlp["lag_seconds"] >= 60
    assert "answered 503" in otlp["last_error"]
    shown = await asyncio.to_thread(run_cli, "audit", "ship", "status")
    assert shown.returncode == 0, shown.stderr
    assert "answered 503" in shown.stdout and receiver.url in shown.stdout


def test_status_without_destinations_says_how_to_add_one(run_cli: RunCli) -> None:
    cli = run_cli("audit", "ship", "status")
    assert cli.returncode == 0
    assert "[audit.ship]" in cli.stdout
    assert orjson.loads(run_cli("audit", "ship", "status", "--json").stdout) == []
