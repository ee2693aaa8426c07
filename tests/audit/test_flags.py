"""Flags on the clock the test sets: new_host once per secret and host, burst against an
agent's own recent rate, denied_streak at 5 refusals within a minute."""

from __future__ import annotations

from typing import Any

from blindkey.audit.flags import BURST_MIN_CALLS, BURST_WINDOW, FlagTracker


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
