"""Audit shipping to the systemd journal by its native protocol, received on a socket the
test binds (`[audit.ship] journal_socket`): every record once, in order, MESSAGE the line as
chained, the BLINDKEY_* fields beside it; through an outage of the receiver; a value with a
newline in the binary-safe form; an entry too large for a datagram in a sealed memfd."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.ship.cursor import cursor_file, load_cursor
from blindkey.audit.ship.journald import JournaldSink, entry
from blindkey.audit.ship.shipper import Shipper
from blindkey.audit.ship.source import parse
from blindkey.audit.store import AuditLog
from blindkey.config.edit import toml_table
from blindkey.config.paths import Paths
from tests.audit.journal_receiver import JournalReceiver, decode
from tests.audit.records import make_record
from tests.audit.ship_receivers import audit_lines, wait_for
from tests.audit.test_ship_syslog import calls
from tests.proxy.conftest import open_env


def journald_at(path: Path) -> Any:
    def configure(document: Any) -> None:
        table = toml_table(document, "audit", "ship")
        table["journald"] = True
        table["journal_socket"] = str(path)

    return configure


def all_received(receiver: JournalReceiver, audit_dir: Path) -> bool:
    return len(receiver.entries) >= len(audit_lines(audit_dir))


def entries_match_the_audit(receiver: JournalReceiver, audit_dir: Path) -> None:
    lines = audit_lines(audit_dir)
    assert receiver.messages() == lines  # once each, in order, as chained
    for fields, line in zip(receiver.entries, lines, strict=True):
        record = orjson.loads(line)
        assert fields["SYSLOG_IDENTIFIER"] == b"blindkey"
        assert fields["PRIORITY"] == (b"4" if record.get("decision") == "blocked" else b"6")
        assert fields["BLINDKEY_SEQ"] == str(record["seq"]).encode()
        assert fields["BLINDKEY_EVENT"] == record["event"].encode()
        if isinstance(record.get("request_id"), str):
            assert fields["BLINDKEY_REQUEST_ID"] == record["request_id"].encode()


async def test_records_reach_the_journal_once_each_in_order_through_an_outage(
    home: Paths, tmp_path: Path
) -> None:
    path = tmp_path / "journal.socket"
    receiver = JournalReceiver(path)
    receiver.start()
    try:
        async with open_env(home, journald_at(path)) as env:
            await calls(env, 20)
            await wait_for(lambda: all_received(receiver, home.audit_dir), what="records")
            receiver.stop()  # journald away: records wait in the audit file
            await calls(env, 20)
            url = "unix:" + str(path)
            await wait_for(
                lambda: load_cursor(cursor_file(home.audit_dir, "journald"), url).error is not None,
                what="the outage to be noticed",
            )
            receiver.start()
            await calls(env, 5)
            await wait_for(lambda: all_received(receiver, home.audit_dir), what="the rest")
        entries_match_the_audit(receiver, home.audit_dir)
    finally:
        receiver.stop()


def test_a_value_with_a_newline_is_sent_length_prefixed() -> None:
    moment = datetime.now(UTC)
    values = make_record("r1", moment, agent="two\nlines", seq=7)
    line = orjson.dumps(values)
    record = parse(line)
    assert record is not None
    fields = decode(entry(record))
    assert fields["BLINDKEY_AGENT"] == b"two\nlines"
    assert fields["MESSAGE"] == line and fields["BLINDKEY_SEQ"] == b"7"
    assert b"BLINDKEY_AGENT\n" + (9).to_bytes(8, "little") + b"two\nlines\n" in entry(record)


async def test_an_entry_larger_than_a_datagram_goes_in_a_memfd(tmp_path: Path) -> None:
    path = tmp_path / "journal.socket"
    receiver = JournalReceiver(path)
    receiver.start()
    audit_dir = tmp_path / "audit"
    log = AuditLog(audit_dir)
    moment = datetime.now(UTC)
    # Beyond what one AF_UNIX datagram may carry (the socket's send buffer, ~208 KiB).
    log.append([make_record("small", moment), make_record("big", moment, note="x" * 600_000)])
    log.append([make_record("after", moment)])
    shipper = Shipper("journald", "unix:" + str(path), JournaldSink(str(path)), audit_dir)
    shipper.start()
    try:
        await wait_for(lambda: len(receiver.entries) >= 3, what="three entries")
        assert receiver.messages() == audit_lines(audit_dir)
        assert receiver.by_memfd == 1
    finally:
        shipper.stop()
        log.close()
        receiver.stop()
