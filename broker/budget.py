"""What each agent spent on priced LLM calls, per UTC day and month, kept by the broker.

The proxy reads an answer's usage (proxy/request/usage.py) and sends it with `spend`; the
broker prices it again with the policy it approved (a hand-lowered price in a refused
config.toml buys no budget) and adds it to the agent's day and month. The totals are a
file of the broker's state directory (`budget.json`, written atomically after each
change, off the event loop), so they survive a restart. Days and months are UTC, the time
of every audit record: a day's budget starts again at 00:00 UTC.

A call is refused once the day or the month has reached its cap; the call that crosses it
is not cut (its cost is known only from its answer), so a cap may be passed by one call.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import orjson

from blindkey.broker.protocol import BrokerDenied, Message
from blindkey.config.atomic import write_atomic
from blindkey.config.model import AGENT_NAME, Settings
from blindkey.config.spend import Budget, cost_usd

log = logging.getLogger("blindkey.broker")
Clock = Callable[[], float]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


def day_of(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def month_of(now: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(now))


def next_day(now: float) -> float:
    """When the UTC day of `now` ends (for Retry-After)."""
    return (math.floor(now / 86400) + 1) * 86400.0


def next_month(now: float) -> float:
    year, month = time.gmtime(now)[:2]
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return float(_timegm(year, month))


def _timegm(year: int, month: int) -> int:
    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))


@dataclass
class Spent:
    """One agent's spend: this day's and this month's USD, and calls nobody could price."""

    day: str = ""
    day_usd: float = 0.0
    month: str = ""
    month_usd: float = 0.0
    calls: int = 0
    unpriced: int = 0

    def roll(self, now: float) -> Spent:
        """The same agent as of `now`: a new day or month starts at zero."""
        day, month = day_of(now), month_of(now)
        if self.month != month:
            return Spent(day, 0.0, month, 0.0, 0, 0)
        if self.day != day:
            return Spent(day, 0.0, month, self.month_usd, self.calls, self.unpriced)
        return self


class Budgets:
    """Spend per agent, in memory and in `budget.json`."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self.spent: dict[str, Spent] = {}
        self._dirty = False
        self._saving: asyncio.Lock | None = None
        self.load()

    def load(self) -> None:
        try:
            raw = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            # Spend cannot be read: start from what the log says, never refuse to run.
            log.error("budget: %s unreadable (%s); counting from zero", self.path, exc)
            return
        if isinstance(raw, dict):
            for agent, fields in raw.get("agents", {}).items():
                if isinstance(fields, dict) and AGENT_NAME.fullmatch(agent):
                    known = {k: v for k, v in fields.items() if k in Spent.__dataclass_fields__}
                    self.spent[agent] = Spent(**known)

    def of(self, agent: str) -> Spent:
        spent = self.spent.get(agent, Spent()).roll(self.clock())
        self.spent[agent] = spent
        return spent

    def add(self, agent: str, usd: float | None) -> Spent:
        spent = self.of(agent)
        spent.calls += 1
        if usd is None:
            spent.unpriced += 1
        else:
            spent.day_usd = round(spent.day_usd + usd, 6)
            spent.month_usd = round(spent.month_usd + usd, 6)
        self._dirty = True
        return spent

    async def save(self) -> None:
        """Write the totals if they changed; one write at a time, off the event loop."""
        if self._saving is None:
            self._saving = asyncio.Lock()
        async with self._saving:
            if not self._dirty:
                return
            self._dirty = False
            data = {"agents": {name: asdict(s) for name, s in sorted(self.spent.items())}}
            try:
                await asyncio.to_thread(write_atomic, self.path, orjson.dumps(data))
            except OSError as exc:
                self._dirty = True
                log.error("budget: cannot write %s (%s)", self.path, exc)

    def refusal(self, agent: str, budget: Budget) -> BrokerDenied | None:
        """budget_exceeded once a day or month has spent its cap."""
        spent, now = self.of(agent), self.clock()
        for cap, used, period, ends in (
            (budget.daily_usd, spent.day_usd, "day", next_day(now)),
            (budget.monthly_usd, spent.month_usd, "month", next_month(now)),
        ):
            if cap is not None and used >= cap:
                rule = f"agents.{agent}.budget.{'daily' if period == 'day' else 'monthly'}_usd"
                return BrokerDenied(
                    "budget_exceeded",
                    f"agent {agent} has spent ${used:.2f} of its ${cap:.2f} this {period} "
                    f"(UTC; rule {rule}); it may call again when the {period} ends",
                    detail=rule,
                    retry_after=max(1, math.ceil(ends - now)),
                )
        return None

    def over_approval(self, agent: str, budget: Budget) -> str | None:
        """The rule when this day's spend is above approve_above_usd (a grant is needed)."""
        limit = budget.approve_above_usd
        if limit is None or self.of(agent).day_usd <= limit:
            return None
        return f"agents.{agent}.budget.approve_above_usd"


class Counting(Protocol):
    """The broker's state, as the spend ops see it."""

    budgets: Budgets
    settings: Settings


def spend_op(state: Counting, request: Message, spawn: Spawn) -> Message:
    """`spend` {agent, request_id, usage}: a proxy's word of what one answer used."""
    agent, usage = request.get("agent"), request.get("usage")
    if not isinstance(agent, str) or not AGENT_NAME.fullmatch(agent) or not isinstance(usage, dict):
        raise BrokerDenied("bad_request", "malformed spend")
    model, given, made = usage.get("model"), usage.get("input_tokens"), usage.get("output_tokens")
    if not (isinstance(model, str) and _count(given) and _count(made)):
        raise BrokerDenied("bad_request", "malformed usage")
    usd = cost_usd(model, given, made, state.settings.prices)
    spent = state.budgets.add(agent, usd)
    spawn(state.budgets.save())
    return {"id": request.get("id"), "cost_usd": usd, "day_usd": spent.day_usd}


def budget_op(state: Counting, request: Message) -> Message:
    """`budget`: what `blindkey budget status` prints."""
    caps = {name: policy.budget for name, policy in state.settings.agents.items()}
    return {"id": request.get("id"), "agents": status_rows(state.budgets, caps)}


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def status_rows(budgets: Budgets, caps: Mapping[str, Budget | None]) -> list[dict[str, Any]]:
    """`budget status`: every agent with a budget or a spend, this UTC day and month."""
    rows = []
    for agent in sorted(set(budgets.spent) | {a for a, b in caps.items() if b is not None}):
        spent, budget = budgets.of(agent), caps.get(agent) or Budget()
        rows.append({
            "agent": agent, "day": spent.day, "day_usd": spent.day_usd,
            "daily_usd": budget.daily_usd, "month": spent.month,
            "month_usd": spent.month_usd, "monthly_usd": budget.monthly_usd,
            "approve_above_usd": budget.approve_above_usd, "calls": spent.calls,
            "unpriced_calls": spent.unpriced,
            "state": _state(budgets, agent, budget),
        })  # fmt: skip
    return rows


def _state(budgets: Budgets, agent: str, budget: Budget) -> str:
    if budgets.refusal(agent, budget) is not None:
        return "exceeded"
    if budgets.over_approval(agent, budget) is not None:
        return "needs_approval"
    return "ok"


def spend_refusal(agent: str, name: str, rule: str) -> BrokerDenied:
    """Past approve_above_usd, a secret goes on only under a grant of it for this agent."""
    return BrokerDenied(
        "approval_required",
        f"agent {agent} has spent more today than its budget lets it spend unasked (rule "
        f"{rule}): a human must grant {name} to it first (`blindkey approve {name} --agent "
        f"{agent}`)",
        detail=rule,
    )
