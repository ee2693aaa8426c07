"""Policy per request: the methods, paths and rates of [secrets.NAME] and [agents.NAME].

Compiled once per config load (`RuleSet`), asked once per resolve. A path is decided on
its decoded segments, in two readings that must both pass: as sent (empty and `.` segments
dropped, `..` kept as a name) and resolved (`..` applied). An upstream that resolves dot
segments sees the second, one that does not sees the first, so `/admin/../repos/acme/x`
passes neither `/repos/acme/*` nor an `/admin` deny-by-omission. A slash the rule cannot
see as a separator (`%2F`, a backslash, `%5C`, or either encoded twice) is refused
whenever path rules apply: an upstream may decode it into a segment boundary.
A trailing slash makes no other path (`/user/` is `/user`); paths are case-sensitive,
methods are not; the query is not part of the path.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

from blindkey.broker.budget import Budgets
from blindkey.broker.leases import LEASE_SECONDS, BucketKey, pool_name
from blindkey.broker.leases import Limiter as Limiter  # `policy test` makes its own
from blindkey.broker.protocol import BrokerDenied
from blindkey.config.model import Settings
from blindkey.config.request_rules import Rate
from blindkey.config.spend import Budget

# The answer holds for any method and path of the target / for this method and path only /
# for this one call (a rate counted it): how long a proxy may keep it.
ANY_REQUEST, THIS_REQUEST, THIS_CALL = "", "request", "each"
# For this method and path while the proxy holds calls of the lease that came with it.
LEASED = "lease"
_TWICE_ENCODED = re.compile(r"%(2f|5c|2e)", re.IGNORECASE)
Message = dict[str, Any]


class PathForms(NamedTuple):
    sent: str  # "" for the root
    resolved: str


@functools.lru_cache(maxsize=4096)
def path_forms(raw: str) -> PathForms | str:
    """Both readings of a request path, or why it cannot be decided on."""
    raw = raw.split("?", 1)[0].split("#", 1)[0]
    if "\\" in raw:
        return "a backslash"
    sent: list[str] = []
    resolved: list[str] = []
    for segment in raw.split("/"):
        text = unquote(segment, errors="surrogateescape")
        if "/" in text or "\\" in text:
            return "an encoded slash or backslash (%2F, %5C)"
        if _TWICE_ENCODED.search(text):
            return "a slash, backslash or dot encoded twice"
        if text in ("", "."):
            continue
        sent.append(text)
        if text == "..":
            if resolved:
                resolved.pop()
        else:
            resolved.append(text)
    return PathForms("".join("/" + s for s in sent), "".join("/" + s for s in resolved))


def glob_regex(pattern: str) -> str:
    """`*` is a segment or part of one (never empty when it is the whole segment), `**` any
    number of segments; the root is the empty string."""
    parts = []
    for segment in pattern.strip("/").split("/") if pattern.strip("/") else []:
        if segment == "**":
            parts.append("(?:/[^/]+)*")
        elif segment == "*":
            parts.append("/[^/]+")
        else:
            parts.append("/" + "[^/]*".join(re.escape(p) for p in segment.split("*")))
    return "".join(parts)


@dataclass(frozen=True)
class Scope:
    """The rules of one table: `where` is its key (`secrets.GITHUB_TOKEN`)."""

    where: str
    label: str  # "secret GITHUB_TOKEN", "agent builder"
    methods: frozenset[str]
    paths: tuple[str, ...]
    matcher: Callable[[str], object] | None
    rate: Rate | None

    @classmethod
    def of(cls, where: str, label: str, policy: Any) -> Scope | None:
        if not (policy.methods or policy.paths or policy.rate):
            return None
        matcher = None
        if policy.paths:
            regex = "|".join(f"(?:{glob_regex(p)})" for p in policy.paths)
            matcher = re.compile(regex).fullmatch
        rate = policy.rate
        methods = frozenset(m.upper() for m in policy.methods)
        return cls(where, label, methods, policy.paths, matcher, rate)

    def refusal(self, method: str, path: str | None) -> BrokerDenied | None:
        if self.methods and method.upper() not in self.methods:
            return BrokerDenied(
                "secret_denied",
                f"{self.label} may be used with {', '.join(sorted(self.methods))} only, not "
                f"{method or 'an unnamed method'} (rule {self.where}.methods)",
                detail=f"{self.where}.methods",
            )
        if self.matcher is None:
            return None
        forms = path_forms(path) if path is not None else "no path (the caller did not say)"
        if isinstance(forms, str):
            why = f"a path with {forms}"
        elif self.matcher(forms.sent) and self.matcher(forms.resolved):
            return None
        else:
            why = repr(forms.resolved or "/")
        return BrokerDenied(
            "secret_denied",
            f"{self.label} may be used on paths {', '.join(self.paths)} only, not on {why} "
            f"(rule {self.where}.paths)",
            detail=f"{self.where}.paths",
        )


class Verdict(NamedTuple):
    denied: BrokerDenied | None
    would_deny: Message | None  # report mode: the refusal enforcing would have answered
    varies: str  # ANY_REQUEST, THIS_REQUEST or THIS_CALL: how long a proxy may keep it
    # Counted by rates only (no budget, no narrowed token): calls of it may be leased.
    leasable: bool = False


ALLOWED = Verdict(None, None, ANY_REQUEST)


def reported(denied: BrokerDenied) -> Message:
    return {"error": denied.code, "detail": denied.detail, "message": str(denied)}


def answer_fields(denied: BrokerDenied | None, verdict: Verdict) -> Message:
    """What a resolve's reply says of its refusal and of the rules of the request."""
    fields: Message = {}
    if denied is not None:
        fields["denied"] = {"error": denied.code, "message": str(denied)}
        if denied.detail is not None:
            fields["denied"].update(detail=denied.detail, retry_after=denied.retry_after)
    if verdict.varies:
        fields["varies"] = verdict.varies
    if verdict.would_deny is not None:
        fields["would_deny"] = verdict.would_deny
    return fields


class RuleSet:
    """The compiled rules of one config load, and the rate buckets kept across loads."""

    def __init__(self, settings: Settings, limiter: Limiter, spend: Budgets | None) -> None:
        self.limiter = limiter
        self.spend = spend  # what agents spent (None: budgets are not counted here)
        self.report = settings.request_policy.mode == "report"
        self.secrets = _scopes("secrets", "secret", settings.secrets)
        self.agents = _scopes("agents", "agent", settings.agents)
        self.budgets: dict[str, Budget] = {
            name: p.budget for name, p in settings.agents.items() if p.budget is not None
        }
        if spend is None:
            self.budgets = {}

    @classmethod
    def empty(
        cls, clock: Callable[[], float], spend: Budgets | None = None, file: Path | None = None
    ) -> RuleSet:
        """`file`: where buckets outlive the broker (rates.json)."""
        return cls(Settings(), Limiter(clock, file), spend)

    def reload(self, settings: Settings) -> RuleSet:
        """The rules of `settings`, with the buckets of the rates it kept (and those read
        from rates.json at start, until the first load says which rates exist)."""
        rules = RuleSet(settings, self.limiter, self.spend)
        rates = {s.where: s.rate.text for s in (*rules.secrets.values(), *rules.agents.values())
                 if s.rate is not None}  # fmt: skip
        self.limiter.keep(lambda key: rates.get(key[0]) == key[2])
        return rules

    def _scopes(self, agent: str, names: Iterable[str]) -> list[Scope]:
        return [s for s in (self.agents.get(agent), *map(self.secrets.get, names)) if s]

    def decide(self, agent: str, names: list[str], method: str, path: str | None) -> Verdict:
        """Methods and paths, then budgets (before tiers and grants); no names: only who
        is asking."""
        if not names or not (self.secrets or self.agents or self.budgets):
            return ALLOWED
        scopes = self._scopes(agent, names)
        budget = self.budgets.get(agent)
        if not scopes and budget is None:
            return ALLOWED
        # Spend changes with every answer: a budget's verdict holds for this call only.
        counted = budget is not None or any(s.rate for s in scopes)
        varies = THIS_CALL if counted else THIS_REQUEST
        for scope in scopes:
            refused = scope.refusal(method, path)
            if refused is not None:
                return self._verdict(refused, varies)
        if budget is not None:
            return self._budget(agent, budget, varies)
        return Verdict(None, None, varies, counted)

    def _budget(self, agent: str, budget: Budget, varies: str) -> Verdict:
        assert self.spend is not None
        refused = self.spend.refusal(agent, budget)
        if refused is not None:
            return self._verdict(refused, varies)
        rule = self.spend.over_approval(agent, budget)
        if rule is None:
            return Verdict(None, None, varies)
        if self.report:
            asked = BrokerDenied(
                "approval_required",
                f"agent {agent} spent more than {budget.approve_above_usd} USD today "
                f"(rule {rule}): each secret it uses needs a grant",
                detail=rule,
            )
            return Verdict(None, reported(asked), varies)
        return Verdict(None, None, varies)  # the gate asks for the grant (asks())

    def asks(self, agent: str) -> str | None:
        """The budget rule when `agent`'s day is past approve_above_usd and the rule is
        enforced: each secret then needs a grant, as a controlled one does."""
        budget = self.budgets.get(agent)
        if budget is None or self.report or self.spend is None:
            return None
        return self.spend.over_approval(agent, budget)

    def count(
        self, agent: str, names: list[str], verdict: Verdict, *, take: bool = True
    ) -> Verdict:
        """Rates, for a call that passed everything else: counted only if none refuses (and
        not at all when report mode already says the call would have been refused, nor
        without `take`: a `policy test` asks, it does not call)."""
        if verdict.varies != THIS_CALL or verdict.would_deny is not None:
            return verdict
        limited = [(s, (s.where, agent, s.rate.text), s.rate)
                   for s in self._scopes(agent, names) if s.rate]  # fmt: skip
        if not limited:
            return verdict
        waits = [(self.limiter.wait(key, rate), scope, rate) for scope, key, rate in limited]
        longest, scope, rate = max(waits, key=lambda w: w[0])
        if longest <= 0.0:
            for _, key, _ in limited if take else ():
                self.limiter.take(key)
            if take:
                self.limiter.save()
            return verdict
        retry = max(1, math.ceil(longest))
        who = f"agent {agent}"
        if scope.where.startswith("secrets."):
            who = f"{scope.label} for agent {agent}"
        refused = BrokerDenied(
            "rate_limited",
            f"{who} is limited to {rate.text} (rule {scope.where}.rate); retry in {retry}s",
            detail=f"{scope.where}.rate",
            retry_after=retry,
        )
        return self._verdict(refused, THIS_CALL)

    def lease(self, agent: str, names: list[str], verdict: Verdict) -> Message | None:
        """More calls like the one just counted (`count`), for a proxy to spend alone: the
        reply's `lease`, or None (not counted by rates only, refused, or buckets too low)."""
        if not verdict.leasable or verdict.denied is not None or verdict.would_deny is not None:
            return None
        limited: list[tuple[BucketKey, Rate]] = [((s.where, agent, s.rate.text), s.rate)
                   for s in self._scopes(agent, names) if s.rate]  # fmt: skip
        granted = self.limiter.lease(limited) if limited else None
        if granted is None:
            return None
        self.limiter.save()
        lease_id, calls = granted
        pool = pool_name(key for key, _ in limited)
        return {"id": lease_id, "pool": pool, "calls": calls, "seconds": LEASE_SECONDS}

    def _verdict(self, refused: BrokerDenied, varies: str) -> Verdict:
        if self.report:
            return Verdict(None, reported(refused), varies)
        return Verdict(refused, None, varies)


def _scopes(table: str, noun: str, policies: Mapping[str, Any]) -> dict[str, Scope]:
    found = {}
    for name, policy in policies.items():
        scope = Scope.of(f"{table}.{name}", f"{noun} {name}", policy)
        if scope is not None:
            found[name] = scope
    return found
