"""AuditRecord.finish(): exactly the INTERFACE.md fields, ts in RFC 3339 UTC."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from blindkey.audit.record import AuditRecord, rfc3339

FIELDS = [
    "ts",
    "request_id",
    "agent",
    "env",
    "method",
    "url",
    "host",
    "secrets",
    "styles",
    "decision",
    "reason",
    "status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "redactions",
    "short_secrets",
    "event",
    "complete",
    "peer",  # issue 30: the canonical decision record
    "rule",
    "detail",
]
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def test_finish_has_exactly_the_interface_fields() -> None:
    record = AuditRecord(request_id="r-1", method="GET", url="https://api.github.com/user")
    finished = record.finish()
    assert set(finished) == set(FIELDS)
    assert list(finished)[:2] == ["ts", "request_id"]


def test_finish_values_of_an_allowed_request() -> None:
    record = AuditRecord(
        request_id="r-2",
        method="POST",
        url="https://api.example.com/v1/items?key={API_KEY}",
        agent="my-agent",
        env="development",
        host="api.example.com",
        secrets=["API_KEY", "OTHER"],
        styles=["query", "bearer"],
    )
    record.status = 201
    record.bytes_in = 12
    record.bytes_out = 3400
    record.redactions = 2
    finished = record.finish()
    assert finished["request_id"] == "r-2"
    assert finished["agent"] == "my-agent"
    assert finished["env"] == "development"
    assert finished["method"] == "POST"
    assert finished["url"] == "https://api.example.com/v1/items?key={API_KEY}"
    assert finished["host"] == "api.example.com"
    assert finished["secrets"] == ["API_KEY", "OTHER"]
    assert finished["styles"] == ["query", "bearer"]
    assert finished["decision"] == "allowed"
    assert finished["reason"] is None
    assert finished["status"] == 201
    assert (finished["bytes_in"], finished["bytes_out"], finished["redactions"]) == (12, 3400, 2)
    # And it serialises as one JSON object with the same keys.
    assert set(orjson.loads(orjson.dumps(finished))) == set(FIELDS)


def test_block_sets_decision_reason_status() -> None:
    record = AuditRecord(request_id="r-3", method="GET", url="https://evil.example/")
    record.block("host_not_allowed", 403)
    finished = record.finish()
    assert finished["decision"] == "blocked"
    assert finished["reason"] == "host_not_allowed"
    assert finished["status"] == 403
    assert set(finished) == set(FIELDS)


def test_ts_is_rfc3339_utc_with_z() -> None:
    before = datetime.now(UTC)
    finished = AuditRecord(request_id="r", method="GET", url="u").finish()
    after = datetime.now(UTC)
    ts = finished["ts"]
    assert RFC3339_UTC.match(ts), ts
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0)
    # Millisecond precision: truncation may put it up to 1 ms before `before`.
    assert before.timestamp() - 0.001 <= moment.timestamp() <= after.timestamp()


def test_ts_is_when_the_request_started_not_when_it_finished() -> None:
    record = AuditRecord(request_id="r", method="GET", url="u", started=1_700_000_000.25)
    assert record.finish()["ts"] == "2023-11-14T22:13:20.250Z"


def test_rfc3339_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Chatham")
    time.tzset()
    try:
        assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
        assert rfc3339(1_800_000_000.999) == "2027-01-15T08:00:00.999Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_duration_is_measured_in_milliseconds() -> None:
    record = AuditRecord(request_id="r", method="GET", url="u")
    time.sleep(0.02)
    duration = record.finish()["duration_ms"]
    assert isinstance(duration, float)
    assert 15 <= duration < 2000


def test_default_lists_are_not_shared() -> None:
    first = AuditRecord(request_id="a", method="GET", url="u")
    second = AuditRecord(request_id="b", method="GET", url="u")
    first.secrets.append("X")
    assert second.finish()["secrets"] == []
