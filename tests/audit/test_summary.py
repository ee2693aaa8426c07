"""`audit summary` figures a person can read right: faults on the way apart from refusals,
probes of the proxy apart from calls, time waiting for a human apart from the service's."""

from __future__ import annotations

from datetime import UTC, datetime

from blindkey.audit.summary import summarise
from tests.audit.records import make_record

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def test_upstream_faults_are_failed_not_blocked() -> None:
    summary = summarise(
        [
            make_record("a", NOW),
            make_record("b", NOW, decision="blocked", reason="host_not_allowed", status=403),
            make_record("c", NOW, decision="blocked", reason="upstream_error", status=502),
            make_record("d", NOW, decision="blocked", reason="upstream_timeout", status=504),
        ]
    )
    figures = summary.total.as_json()
    assert (figures["allowed"], figures["blocked"], figures["failed"]) == (1, 1, 2)
    assert figures["refusals"] == {
        "host_not_allowed": 1,
        "upstream_error": 1,
        "upstream_timeout": 1,
    }


def test_health_probes_are_not_calls() -> None:
    probe = make_record("h", NOW, method="GET", url="/health", host=None, secrets=[])
    summary = summarise([make_record("a", NOW), probe, probe])
    assert summary.total.calls == 1
    assert summary.events == {"request": 1, "health": 2}
    assert "-" not in summary.by_host


def test_time_held_for_a_human_does_not_set_the_percentiles() -> None:
    records = [make_record(f"r{i}", NOW, duration_ms=10.0) for i in range(99)]
    records.append(make_record("held", NOW, duration_ms=39_012.0, waited_ms=39_000.0))
    figures = summarise(records).by_secret["GITHUB_TOKEN"].as_json()
    assert figures["p99_ms"] == 10.0 and figures["calls"] == 100
