"""The keys of policy per request: which methods and paths a secret or an agent may use, how
often, and whether those rules are enforced or only reported.

Values are checked here, where the file is read, so a bad glob or rate names its key; the
broker compiles them once per load (broker/rules.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from blindkey.config.fields import setting
from blindkey.config.spend import BUDGET, Budget
from blindkey.config.values import Kind, choice, string_list, toml_value

POLICY_MODES = ("enforce", "report")
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([a-z]+)\s*\Z")
_PERIODS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip


@dataclass(frozen=True)
class Rate:
    """`count` calls per `period` seconds, as a token bucket that holds `count`."""

    count: int
    period: float
    text: str

    @property
    def per_second(self) -> float:
        return self.count / self.period


def parse_rate(value: Any) -> Rate | None:
    if not isinstance(value, str):
        raise ValueError(f'expected a rate such as "120/min", "10/s" or "1000/h", got {value!r}')
    if not value.strip():
        return None
    match = _RATE.match(value.lower())
    if match is None or match.group(2) not in _PERIODS or int(match.group(1)) <= 0:
        raise ValueError(f'expected a rate such as "120/min", "10/s" or "1000/h", got {value!r}')
    return Rate(int(match.group(1)), _PERIODS[match.group(2)], value.strip())


def _show_rate(rate: Rate | None) -> str:
    return toml_value("" if rate is None else rate.text)


def parse_method(value: str) -> str:
    if not _METHOD.match(value):
        raise ValueError(f"expected an HTTP method such as GET, got {value!r}")
    return value.upper()


def parse_path_glob(value: str) -> str:
    """A path glob: from "/", `*` one segment (or part of one), `**` any number of them."""
    if not value.startswith("/"):
        raise ValueError(f'a path glob starts with "/", got {value!r}')
    if "?" in value or "#" in value:
        raise ValueError(f"a path glob is a path only (the query is not part of it): {value!r}")
    if any("**" in part and part != "**" for part in value.split("/")):
        raise ValueError(f"`**` must be a whole segment (/a/**/b), got {value!r}")
    # A trailing slash does not make another path (see broker/rules.py).
    return value.rstrip("/") or "/"


RATE: Kind[Rate | None] = Kind(parse_rate, _show_rate, 'rate (`"120/min"`, `"10/s"`, `"1000/h"`)')
METHODS = string_list(parse_method, name="list of HTTP methods")
PATH_GLOBS = string_list(parse_path_glob, name="list of path globs")


@dataclass(frozen=True)
class AgentPolicy:
    """[agents.NAME]: what one agent may do whatever secret it uses."""

    methods: tuple[str, ...] = setting(METHODS, (), "empty: any method", example=["GET"])
    paths: tuple[str, ...] = setting(PATH_GLOBS, (), "globs on the path; empty: any path")
    rate: Rate | None = setting(  # noqa: RUF009 - Rate is frozen, shared safely
        RATE, None, "calls of this agent, all secrets together", example="600/min"
    )
    budget: Budget | None = setting(  # noqa: RUF009 - Budget is frozen, shared safely
        BUDGET,
        None,
        "USD of priced LLM calls per UTC day/month",
        doc="what this agent may spend on priced LLM calls (`[prices]`) per UTC day and "
        "month: past either, calls are refused `429 budget_exceeded`; once a day's spend is "
        "above `approve_above_usd`, each secret it uses needs a grant",
        example={"daily_usd": 5.0, "monthly_usd": 50.0, "approve_above_usd": 4.0},
    )


@dataclass(frozen=True)
class PolicySettings:
    mode: str = setting(
        choice(POLICY_MODES),
        "enforce",
        '"report": method, path and rate rules only record would_deny',
        doc="`report`: the method, path and rate rules are not enforced, a call they would "
        "refuse is recorded with `would_deny`; the allowlist, bindings and tiers always are",
    )
