"""Flags on the clock the test sets: new_host once per secret and host, burst against an
agent's own recent rate, denied_streak at 5 refusals within a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from blindkey.audit.flags import BURST_MIN_CALLS, BURST_WINDOW, SEEN_FILE, FlagTracker, load_seen
from blindkey.audit.record import AuditRecord
from blindkey.audit.writer import AuditWriter, audit_file


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def call(agent: str = "a", host: str = "api.example.com", **extra: Any) -> dict[str, Any]:
    return {"agent": agent, "host": host, "secrets": ["K"], "decision": "allowed", **extra}


def test_new_host_once_per_secret_and_host() -> None:
    tracker = FlagTracker(clock=Clock())
    assert tracker.flags(call()) == ["new_host"]
    assert tracker.flags(call()) == []
    assert tracker.flags(call(host="other.example")) == ["new_host"]
    assert tracker.flags(call(secrets=["K", "L"])) == ["new_host"]  # L is new there
    assert tracker.flags(call(decision="blocked", host="third.example")) == []


def test_learned_pairs_are_not_new() -> None:
    tracker = FlagTracker(clock=Clock())
    tracker.learn([call(), {"event": "config"}, call(decision="blocked", host="x.example")])
    assert tracker.flags(call()) == []
    assert tracker.flags(call(host="x.example")) == ["new_host"]


def test_burst_is_against_the_agents_own_rate() -> None:
    clock = Clock()
    tracker = FlagTracker(clock=clock)
    tracker.learn([call()])
    # A steady 20 calls per window for a minute: never a burst.
    for _ in range(6):
        for _ in range(20):
            assert "burst" not in tracker.flags(call())
        clock.now += BURST_WINDOW
    # Then 10x that within one window: flagged once past both thresholds.
    flagged = ["burst" in tracker.flags(call()) for _ in range(210)]
    assert not any(flagged[: BURST_MIN_CALLS - 1])
    assert flagged[-1] and not all(flagged)
    # Another agent's steady rate is its own.
    assert "burst" not in tracker.flags(call(agent="b"))


def test_denied_streak_within_a_minute() -> None:
    clock = Clock()
    tracker = FlagTracker(clock=clock)
    refused = call(decision="blocked", reason="host_not_allowed")
    streak = []
    for _ in range(6):
        streak.append("denied_streak" in tracker.flags(refused))
        clock.now += 10
    assert streak == [False] * 4 + [True] * 2
    clock.now += 61  # the old refusals age out
    assert "denied_streak" not in tracker.flags(refused)
    assert "denied_streak" not in tracker.flags(call(agent="other", decision="blocked"))


def _used(host: str) -> AuditRecord:
    record = AuditRecord(request_id=host, method="GET", url=f"https://{host}/", host=host)
    record.secrets = ["K"]
    return record


async def _flags_after_restart(audit_dir: Path, host: str) -> list[str]:
    writer = AuditWriter(audit_dir)
    await writer.start()
    if writer.learning is not None:  # an audit from before seen-hosts.json: read off the start
        await writer.learning
    try:
        sealed = writer.seal(_used(host))
        assert sealed is None
    finally:
        await writer.close()
    last = audit_file(audit_dir).read_bytes().splitlines()[-1]
    flags: list[str] = orjson.loads(last)["flags"]
    return flags


async def test_a_restart_remembers_pairs_from_the_small_file(tmp_path: Path) -> None:
    """A start reads the pairs kept beside the audit, not the audit file: with the audit
    file's records gone, a pair used before is still not new."""
    assert await _flags_after_restart(tmp_path, "a.example") == ["new_host"]
    assert load_seen(tmp_path) == {("K", "a.example")}
    audit_file(tmp_path).write_bytes(b"")  # what a start would have parsed
    assert await _flags_after_restart(tmp_path, "a.example") == []
    assert await _flags_after_restart(tmp_path, "b.example") == ["new_host"]


async def test_an_audit_from_before_the_file_is_learnt_once(tmp_path: Path) -> None:
    assert await _flags_after_restart(tmp_path, "a.example") == ["new_host"]
    (tmp_path / SEEN_FILE).unlink()
    writer = AuditWriter(tmp_path)
    await writer.start()
    assert writer.learning is not None  # not on the start's path: it is read in the background
    await writer.close()
    assert await _flags_after_restart(tmp_path, "a.example") == []
    assert load_seen(tmp_path) == {("K", "a.example")}
