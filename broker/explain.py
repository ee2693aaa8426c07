"""`blindkey policy test` and `blindkey policy replay`: the decision of a call and the rule
that made it, from BrokerState.decide, the code every resolve runs (no copy of it here);
and recorded requests decided again under the current or a proposed config.

What neither can know is said, not guessed: the address a host resolves to is vetted when
it is dialled; grants are today's for `test` and not replayed by `replay` (a call that
needed one counts as the same decision); rates are replayed at the records' own times;
budgets are not replayed (spend is counted from answers, see `budget status`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from blindkey.broker.protocol import BrokerDenied, Message
from blindkey.broker.rules import Limiter, RuleSet
from blindkey.config.model import AGENT_NAME, SECRET_NAME, Settings
from blindkey.config.paths import Paths

if TYPE_CHECKING:
    from blindkey.broker.state import BrokerState

# Refusals that policy decides (others, such as upstream errors, replay cannot judge).
POLICY_REASONS = frozenset({"secret_denied", "rate_limited", "budget_exceeded",
                            "approval_required", "host_not_allowed", "unknown_secret"})  # fmt: skip
_PRESENT = object()  # a value the decision need not see


def target_of(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, raw path without the query) of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an absolute http(s) URL, got {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, parts.hostname.rstrip(".").lower(), port, parts.path or "/"


def _rule_of(denied: BrokerDenied, name: str | None) -> str:
    if denied.detail is not None:
        return denied.detail
    text = str(denied)
    found = {
        "not bound to agent": "agents", "not released": "release",
        "approved allowlist": "hosts", "is not bound to": "hosts",
    }  # fmt: skip
    for words, key in found.items():
        if words in text and name is not None:
            return f"secrets.{name}.{key}"
    if denied.code == "approval_required" and name is not None:
        return f"secrets.{name}.tier"
    return f"secrets.{name}" if name is not None else "agents"


def explain(
    state: BrokerState, agent: str, names: list[str], url: str, method: str, *, take: bool = False
) -> dict[str, Any]:
    """{"decision", "error", "rule", "message", "would_deny"} of one call as the broker
    decides it now (or, replaying, as the state's settings decide it)."""
    scheme, host, port, path = target_of(url)
    entries = [e for e in state.settings.allowlist.entries if e.matches(scheme, host, port)]
    if not entries:
        return _result("host_not_allowed", "allowlist",
                       f"{scheme}://{host}:{port} is on no allowlist entry")  # fmt: skip
    env = state.settings.active_env
    view = state.view
    found: list[object] = []
    for name in names:
        value = view.lookup(env, name) if view is not None else _PRESENT
        found.append(value if value is None else _PRESENT)
    target = (scheme, host, port)
    try:
        denied, verdict, refused = state.decide(
            None, agent, env, names, found, target, method.upper(), path, take=take
        )
    except BrokerDenied as exc:
        denied, verdict, refused = exc, None, None
    if denied is not None:
        return _result(denied.code, _rule_of(denied, refused), str(denied))
    result = _result(None, f"allowlist {entries[0].text}", "no rule refuses it")
    if verdict is not None and verdict.would_deny is not None:
        result["would_deny"] = verdict.would_deny
    return result


def _result(error: str | None, rule: str, message: str) -> dict[str, Any]:
    return {"decision": "blocked" if error else "allowed", "error": error, "rule": rule,
            "message": message, "would_deny": None}  # fmt: skip


def explain_op(state: BrokerState, request: Message) -> Message:
    """`explain` {agent, names, url, method}: `policy test` asked of the running broker."""
    agent, names = request.get("agent"), request.get("names")
    url, method = request.get("url"), request.get("method")
    if not (isinstance(agent, str) and (AGENT_NAME.fullmatch(agent) or agent == "anonymous")
            and isinstance(names, list) and all(isinstance(n, str) and SECRET_NAME.match(n)
                                                for n in names)
            and isinstance(url, str) and isinstance(method, str)):  # fmt: skip
        raise BrokerDenied("bad_request", "malformed explain")
    try:
        result = explain(state, agent, names, url, method)
    except ValueError as exc:
        raise BrokerDenied("bad_request", str(exc)) from None
    return {"id": request.get("id"), **result}


class _ReplayClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def replay(
    paths: Paths, settings: Settings, records: Iterable[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Each recorded request policy decided, decided again under `settings`: {record
    fields, "was", "now", "rule", "changed"}."""
    from blindkey.broker.state import BrokerState

    clock = _ReplayClock()
    state = BrokerState(paths, clock=clock)  # nothing loaded: no value is read
    state.settings = settings
    state.rules = RuleSet(settings, Limiter(clock), None)
    for record in records:
        was = _was(record)
        url, agent = record.get("url"), record.get("agent")
        names = record.get("secrets") or []
        if was is None or not isinstance(url, str) or not isinstance(agent, str) or not names:
            continue
        clock.now = datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()
        try:
            now = explain(state, agent, list(names), url, str(record.get("method", "GET")),
                          take=True)  # fmt: skip
        except ValueError:
            continue
        decided = now["error"] or "allowed"
        # Grants are not replayed: a call allowed then may have had one.
        same = decided == was or (was, decided) == ("allowed", "approval_required")
        yield {"ts": record["ts"], "request_id": record.get("request_id"), "agent": agent,
               "method": record.get("method"), "url": url, "secrets": names, "was": was,
               "now": decided, "rule": now["rule"], "changed": not same}  # fmt: skip


def _was(record: dict[str, Any]) -> str | None:
    if record.get("event", "request") != "request":
        return None
    if record.get("decision") == "allowed":
        return "allowed"
    reason = record.get("reason")
    return reason if reason in POLICY_REASONS else None
