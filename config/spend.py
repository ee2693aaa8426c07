"""The keys of LLM spend: `[prices."MODEL"]` (USD per million tokens) and an agent's
`budget` (USD per day and per month, and the spend above which a human must approve).

Pricing lives here, beside its keys, because the proxy prices a call for its record and
the broker prices it again, with the policy it approved, for the agent's budget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blindkey.config.fields import setting
from blindkey.config.values import Kind

# Model names as vendors spell them: `gpt-4o-2024-08-06`, `claude-sonnet-4-5`, `openai/o3`.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}\Z")
_BUDGET_KEYS = ("daily_usd", "monthly_usd", "approve_above_usd")


def _usd(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"expected a number of US dollars (0 or more), got {value!r}")
    return float(value)


USD: Kind[float] = Kind(_usd, lambda v: f"{v:g}", "USD (a number, 0 or more)")


@dataclass(frozen=True)
class ModelPrice:
    """[prices."MODEL"]: what one model costs; a model answering with a dated name
    (`gpt-4o-2024-08-06`) is priced by the longest name here it starts with, then `-`."""

    input: float = setting(USD, 0.0, "USD per million input tokens", example=2.5)
    output: float = setting(USD, 0.0, "USD per million output tokens", example=10.0)


@dataclass(frozen=True)
class Budget:
    """What one agent may spend on priced LLM calls; None: no cap of that kind."""

    daily_usd: float | None = None
    monthly_usd: float | None = None
    approve_above_usd: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.daily_usd, self.monthly_usd,
                                           self.approve_above_usd))  # fmt: skip


def _budget(value: Any) -> Budget | None:
    if not isinstance(value, Mapping):
        raise ValueError(
            "expected an inline table such as { daily_usd = 5.0, monthly_usd = 50.0, "
            f"approve_above_usd = 4.0 }}, got {value!r}"
        )
    unknown = sorted(set(value) - set(_BUDGET_KEYS))
    if unknown:
        raise ValueError(f"unknown budget key {unknown[0]!r}: use {', '.join(_BUDGET_KEYS)}")
    budget = Budget(**{k: _usd(v) for k, v in value.items()})
    return budget if budget.any else None


def _show_budget(budget: Budget | None) -> str:
    if budget is None:
        return "{}"
    given = [(k, getattr(budget, k)) for k in _BUDGET_KEYS]
    shown = [f"{k} = {v:g}" for k, v in given if v is not None]
    return "{ " + ", ".join(shown) + " }"


BUDGET: Kind[Budget | None] = Kind(
    _budget, _show_budget, "inline table of USD: `daily_usd`, `monthly_usd`, `approve_above_usd`"
)


def price_of(model: str | None, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of `model`: its own table, else the longest name it extends with `-`."""
    if not model:
        return None
    found = prices.get(model)
    if found is not None:
        return found
    best = ""
    for name in prices:
        if model.startswith(name + "-") and len(name) > len(best):
            best = name
    return prices[best] if best else None


def cost_usd(
    model: str | None, input_tokens: int, output_tokens: int, prices: Mapping[str, ModelPrice]
) -> float | None:
    """USD for one call, to the millionth of a dollar; None when the model has no price."""
    price = price_of(model, prices)
    if price is None:
        return None
    return round((input_tokens * price.input + output_tokens * price.output) / 1e6, 6)
