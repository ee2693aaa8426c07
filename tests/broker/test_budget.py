"""Budgets in the broker, with an injected clock: spend counted per UTC day and month,
refused past a cap until the day or month ends, a grant asked above approve_above_usd,
kept across a restart, and only recorded in report mode."""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.budget import budget_op, spend_op
from blindkey.broker.policy import policy_view, settings_from_text, widenings
from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.state import BrokerAnswer, BrokerState
from blindkey.broker.vault import FileVault
from blindkey.config.atomic import write_atomic
from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG

POLICY = """
[agents.builder]
budget = { daily_usd = 1.0, monthly_usd = 2.5, approve_above_usd = 0.5 }

[prices."gpt-4o"]
input = 0.0
output = 10000.0
"""


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, 0, 0, 0, 0)))


class Clock:
    def __init__(self) -> None:
        self.now = utc(2027, 1, 31, 23, 0)

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    home: Paths
    state: BrokerState
    clock: Clock
    builder: str
    other: str
    tasks: list[asyncio.Task[None]]

    def call(self, token: str | None = None) -> BrokerAnswer:
        return self.state.resolve(token or self.builder, ["KEY"], "api.openai.com", "https",
                                  443, "POST", "/v1/chat/completions")  # fmt: skip

    async def spend(self, usd: float, agent: str = "builder", model: str = "gpt-4o") -> None:
        """What the proxy says after an answer: output tokens priced at $0.01 each."""
        usage = {"model": model, "input_tokens": 9, "output_tokens": round(usd * 100)}
        spend_op(self.state, {"id": 1, "agent": agent, "usage": usage}, self._spawn)
        await asyncio.gather(*self.tasks)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(work))

    def restart(self) -> None:
        self.state.close()
        self.state = BrokerState(self.home, clock=self.clock)
        assert self.state.refresh() is True


def make_world(home: Paths, mode: str = "enforce") -> World:
    text = DEFAULT_CONFIG.replace('mode = "enforce"', f'mode = "{mode}"')
    write_atomic(home.config_file, (text + POLICY).encode())
    FileVault(home).set("development", "KEY", "sk-value-0123456789abcdef")
    agents = AgentStore(home.agents_file, home.lock_file)
    builder, other = agents.add("builder"), agents.add("other")
    clock = Clock()
    state = BrokerState(home, clock=clock)
    assert state.refresh() is True and state.last_error is None
    return World(home, state, clock, builder, other, [])


@pytest.fixture
def world(home: Paths) -> Iterator[World]:
    built = make_world(home)
    yield built
    built.state.close()


def refusal(answer: BrokerAnswer) -> tuple[str, str | None, int | None] | None:
    denied = answer.denied
    return None if denied is None else (denied.code, denied.detail, denied.retry_after)


async def test_a_day_past_its_cap_is_refused_until_the_utc_day_ends(world: World) -> None:
    assert refusal(world.call()) is None
    await world.spend(0.5)
    assert refusal(world.call()) is None  # at approve_above_usd, not above it
    await world.spend(0.4)
    # Above approve_above_usd: each secret needs a grant (the approvals of wave 2).
    rule = "agents.builder.budget.approve_above_usd"
    assert refusal(world.call()) == ("approval_required", rule, None)
    await world.spend(0.1)
    # $1.00 of $1.00 at 23:00 UTC: refused for the hour left of the day.
    rule = "agents.builder.budget.daily_usd"
    assert refusal(world.call()) == ("budget_exceeded", rule, 3600)
    assert "spent $1.00 of its $1.00 this day" in str(world.call().denied)
    # Another agent's spend is its own.
    assert refusal(world.call(world.other)) is None
    world.clock.now = utc(2027, 2, 1, 0, 0)  # a new day, and a new month
    assert refusal(world.call()) is None
    (row,) = [r for r in budget_op(world.state, {"id": 1})["agents"] if r["agent"] == "builder"]
    assert (row["day"], row["day_usd"], row["month"], row["month_usd"]) == (
        "2027-02-01", 0.0, "2027-02", 0.0,
    )  # fmt: skip


async def test_a_month_past_its_cap_is_refused_until_the_month_ends(world: World) -> None:
    world.clock.now = utc(2027, 2, 26, 12)
    for day in (26, 27):
        world.clock.now = utc(2027, 2, day, 12)
        await world.spend(1.0)
    world.clock.now = utc(2027, 2, 28, 12)
    await world.spend(0.5)
    rule = "agents.builder.budget.monthly_usd"
    assert refusal(world.call()) == ("budget_exceeded", rule, 12 * 3600)
    world.clock.now = utc(2027, 2, 28, 23, 59)
    assert refusal(world.call()) == ("budget_exceeded", rule, 60)
    world.clock.now = utc(2027, 3, 1)
    assert refusal(world.call()) is None


async def test_spend_survives_a_broker_restart_mid_day(world: World) -> None:
    await world.spend(0.7)
    world.restart()
    await world.spend(0.3)
    daily = ("budget_exceeded", "agents.builder.budget.daily_usd", 3600)
    assert refusal(world.call()) == daily
    world.restart()
    assert refusal(world.call()) == daily
    world.clock.now += 3600
    world.restart()
    assert refusal(world.call()) is None


async def test_an_unpriced_model_is_counted_but_costs_nothing(world: World) -> None:
    await world.spend(5.0, model="gpt-unpriced")
    assert refusal(world.call()) is None
    (row,) = [r for r in budget_op(world.state, {"id": 1})["agents"] if r["agent"] == "builder"]
    assert (row["calls"], row["unpriced_calls"], row["day_usd"], row["state"]) == (1, 1, 0, "ok")


async def test_a_budget_answer_is_never_kept_by_a_proxy(world: World) -> None:
    assert world.call().rules.varies == "each"


async def test_report_mode_records_would_deny_and_refuses_nothing(home: Paths) -> None:
    world = make_world(home, mode="report")
    try:
        await world.spend(0.6)
        answer = world.call()
        assert answer.denied is None and answer.rules.would_deny is not None
        assert answer.rules.would_deny["error"] == "approval_required"
        await world.spend(0.4)
        answer = world.call()
        assert answer.denied is None and answer.values == {"KEY": "sk-value-0123456789abcdef"}
        assert answer.rules.would_deny is not None
        assert answer.rules.would_deny["error"] == "budget_exceeded"
        assert answer.rules.would_deny["detail"] == "agents.builder.budget.daily_usd"
    finally:
        world.state.close()


def test_a_malformed_spend_is_refused(world: World) -> None:
    for usage in ({"model": "gpt-4o"}, {"model": 1, "input_tokens": 1, "output_tokens": 1},
                  {"model": "m", "input_tokens": -1, "output_tokens": 1},
                  {"model": "m", "input_tokens": True, "output_tokens": 1}):  # fmt: skip
        with pytest.raises(BrokerDenied):
            spend_op(world.state, {"agent": "builder", "usage": usage}, lambda work: None)
    with pytest.raises(BrokerDenied):
        spend_op(world.state, {"agent": "../x", "usage": {}}, lambda work: None)


def widened(before: str, after: str) -> list[str]:
    def view(text: str) -> dict[str, Any]:
        return policy_view(settings_from_text(Path("config.toml"), text))

    return widenings(view(before), view(after), lambda name: True)


def test_raising_or_removing_a_budget_or_lowering_a_price_widens_the_policy() -> None:
    caps = "[agents.b]\nbudget = { daily_usd = 1.0, monthly_usd = 9.0 }\n"
    price = '[prices."gpt-4o"]\ninput = 2.5\noutput = 10.0\n'
    assert widened(caps + price, caps + price) == []
    assert widened("", caps) == []  # a budget added narrows
    assert widened(caps, caps.replace("1.0", "0.5")) == []
    assert widened(caps, caps.replace("1.0", "2.0")) == [
        "agent b budget daily_usd goes from 1.0 to 2.0"
    ]
    assert widened(caps, "") == [
        "agent b budget daily_usd goes from 1.0 to no cap",
        "agent b budget monthly_usd goes from 9.0 to no cap",
    ]
    assert widened(price, price.replace("10.0", "1.0")) == [
        "prices.gpt-4o is lowered: budgets buy more of it"
    ]
    assert widened(price, "") == ["prices.gpt-4o is lowered: budgets buy more of it"]
    assert widened(price, price.replace("10.0", "20.0")) == []
