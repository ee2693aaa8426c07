"""The last approved policy, and what widens it.

The broker keeps the policy it last accepted (the whole config.toml text and the policy
fields of it) sealed with the vault key, as it keeps approvers: an agent that can write
config.toml cannot write this. Once an approver exists, a config.toml whose policy is
wider than the approved one is refused (the broker serves the approved text) until an
approver's code accepts it; narrowing is accepted as it comes and becomes the new baseline.

Tiers and `approvals` counts are not compared here: the approvals' floors already serve a
hand-lowered tier at its floor, and lowering one through the CLI needs a code there.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from blindkey.broker.approvals.model import RANK, ApprovalsState, Floor
from blindkey.broker.approvals.service import Approvals
from blindkey.broker.oversight import oversight_changes, oversight_view
from blindkey.broker.vault import read_sealed, write_sealed
from blindkey.config.atomic import locked
from blindkey.config.errors import BlindkeyError, ConfigError
from blindkey.config.loader import parse_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.config.request_rules import AgentPolicy
from blindkey.config.secrets_table import DEFAULT_POLICY, SecretPolicy

_MAGIC = b"BKP1"
View = dict[str, Any]
# Whether a secret's value is still stored anywhere (a table that went away with its
# value narrows; one that went away while the value stays falls back to the wide default).
Held = Callable[[str], bool]


def secret_view(policy: SecretPolicy) -> View:
    return {
        "tier": policy.tier,
        "hosts": sorted(str(h) for h in policy.hosts),
        "agents": sorted(policy.agents),
        "release": sorted(policy.release),
        "approvals": policy.approvals,
        "allow_range": policy.allow_range,
        **rules_view(policy),
    }


def rules_view(policy: SecretPolicy | AgentPolicy) -> View:
    """Policy per request: a rule removed, or a method, path or faster rate added, widens."""
    return {
        "methods": sorted(policy.methods),
        "paths": sorted(policy.paths),
        "rate": None if policy.rate is None else [policy.rate.text, policy.rate.per_second],
    }


def policy_view(settings: Settings) -> View:
    """The fields of config.toml that decide what an agent can reach, and where the audit's
    copies and approvers' notices go (never a value; broker/oversight.py)."""
    return {
        "allowlist": sorted(e.text for e in settings.allowlist.entries),
        "private_ranges": sorted(str(n) for n in settings.allowlist.private_ranges),
        "allow_remote": settings.proxy.allow_remote,
        "allowed_peers": sorted(str(n) for n in settings.proxy.allowed_peers),
        "require_agent_token": settings.proxy.require_agent_token,
        "secrets": {name: secret_view(p) for name, p in sorted(settings.secrets.items())},
        "routes": {
            name: {"to": r.to, "style": r.style, "secret": r.secret, "param": r.param}
            for name, r in sorted(settings.routes.items())
        },
        "active_env": settings.active_env,
        "agents": {name: agent_view(p) for name, p in sorted(settings.agents.items())},
        "policy_mode": settings.request_policy.mode,
        "prices": {m: [p.input, p.output] for m, p in sorted(settings.prices.items())},
        **oversight_view(settings),
    }


def agent_view(policy: AgentPolicy) -> View:
    budget = policy.budget
    caps = None if budget is None else [budget.daily_usd, budget.monthly_usd,
                                        budget.approve_above_usd]  # fmt: skip
    return {**rules_view(policy), "budget": caps}


_DEFAULT = secret_view(DEFAULT_POLICY)
_NO_RULES = agent_view(AgentPolicy())


def _more(before: list[str], after: list[str]) -> list[str]:
    return sorted(set(after) - set(before))


def _secret_widenings(name: str, before: View, after: View) -> list[str]:
    found = []
    if before["hosts"] and (not after["hosts"] or _more(before["hosts"], after["hosts"])):
        added = _more(before["hosts"], after["hosts"]) or ["any allowlisted host"]
        found.append(f"secret {name} may go to {', '.join(added)}")
    if "*" not in before["agents"] and _more(before["agents"], after["agents"]):
        found.append(f"secret {name} may be used by {', '.join(after['agents'])}")
    if _more(before["release"], after["release"]):
        found.append(f"secret {name} is released to {', '.join(after['release'])}")
    # A policy kept before the key existed has none: it did not allow parts.
    if after.get("allow_range") and not before.get("allow_range"):
        found.append(f"secret {name} may be read in slices (allow_range)")
    return found + _rule_widenings(f"secret {name}", before, after)


def _rule_widenings(who: str, before: View, after: View) -> list[str]:
    # A policy kept before these keys existed has none of them: it had no such rules.
    found = []
    for key, noun in (("methods", "methods"), ("paths", "paths")):
        old, new = before.get(key) or [], after.get(key) or []
        if old and (not new or _more(old, new)):
            found.append(f"{who} may use {', '.join(_more(old, new)) or f'any {noun}'}")
    old_rate, new_rate = before.get("rate"), after.get("rate")
    if old_rate and (not new_rate or new_rate[1] > old_rate[1]):
        found.append(f"{who} may call {new_rate[0] if new_rate else 'without a rate limit'}")
    # A budget cap removed or raised lets an agent spend more (or more without asking).
    old_caps, new_caps = before.get("budget") or [None] * 3, after.get("budget") or [None] * 3
    for old, new, cap in zip(old_caps, new_caps, ("daily_usd", "monthly_usd",
                                                  "approve_above_usd"), strict=True):  # fmt: skip
        if old is not None and (new is None or new > old):
            found.append(f"{who} budget {cap} goes from {old} to {new or 'no cap'}")
    return found


def widenings(before: View, after: View, held: Held) -> list[str]:
    """What `after` lets an agent reach that `before` did not, in words; [] if nothing."""
    found = [f"allowlist adds {e}" for e in _more(before["allowlist"], after["allowlist"])]
    found += [
        f"private_ranges adds {r}" for r in _more(before["private_ranges"], after["private_ranges"])
    ]
    if after["allow_remote"] and not before["allow_remote"]:
        found.append("allow_remote is turned on")
    found += [
        f"allowed_peers adds {p}" for p in _more(before["allowed_peers"], after["allowed_peers"])
    ]
    if before["require_agent_token"] and not after["require_agent_token"]:
        found.append("require_agent_token = false")
    for name in sorted(set(before["secrets"]) | set(after["secrets"])):
        old = before["secrets"].get(name, _DEFAULT)
        new = after["secrets"].get(name)
        if new is None:
            if not held(name):
                continue  # deleted with its value: nothing is left to reach
            new = _DEFAULT
        found += _secret_widenings(name, old, new)
    for name in sorted(set(before.get("agents", {})) | set(after.get("agents", {}))):
        old = before.get("agents", {}).get(name, _NO_RULES)
        found += _rule_widenings(f"agent {name}", old, after["agents"].get(name, _NO_RULES))
    for model, price in before.get("prices", {}).items():
        new_price = after.get("prices", {}).get(model)
        if new_price is None or new_price[0] < price[0] or new_price[1] < price[1]:
            found.append(f"prices.{model} is lowered: budgets buy more of it")
    if after.get("policy_mode") == "report" and before.get("policy_mode", "enforce") != "report":
        found.append("[policy] mode = report: method, path and rate rules are not enforced")
    for name, route in after["routes"].items():
        if before["routes"].get(name) != route:
            found.append(f"route {name} sends {route['secret']} to {route['to']}")
    return found + oversight_changes(before, after)


def changed_keys(before: View, after: View) -> tuple[list[str], View, View]:
    """The keys that differ (`secrets.NAME`, `routes.NAME`, `allowlist`, ...) and the
    before and after of those keys only."""
    keys: list[str] = []
    old: View = {}
    new: View = {}
    for key in sorted(set(before) | set(after)):
        if key in ("secrets", "routes", "agents"):
            inner_old, inner_new = before.get(key, {}), after.get(key, {})
            for name in sorted(set(inner_old) | set(inner_new)):
                if inner_old.get(name) != inner_new.get(name):
                    keys.append(f"{key}.{name}")
                    old[f"{key}.{name}"] = inner_old.get(name)
                    new[f"{key}.{name}"] = inner_new.get(name)
        elif before.get(key) != after.get(key):
            keys.append(key)
            old[key], new[key] = before.get(key), after.get(key)
    return keys, old, new


def lowered(approvals: Approvals, settings: Settings) -> dict[str, tuple[str, int]]:
    """Secrets whose tier or approvals count `settings` puts below what is served now."""
    found = {}
    for name, policy in settings.secrets.items():
        tier, needed = approvals.effective(name, policy)
        if RANK[policy.tier] < RANK[tier] or policy.approvals < needed:
            found[name] = (policy.tier, policy.approvals)
    return found


def settings_from_text(file: Path, text: str) -> Settings:
    try:
        return parse_settings(file, tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc


class PolicyStore:
    """`policy.bin` in the broker's state directory: {"text", "policy"} sealed."""

    def __init__(self, paths: Paths) -> None:
        self.path = paths.state_dir / "policy.bin"
        self.key_path = paths.vault_key
        self.lock_path = paths.state_dir / "policy.lock"

    def load(self) -> Mapping[str, Any] | None:
        return read_sealed(self.path, self.key_path, _MAGIC, "approved policy")

    def save(self, text: str, view: View) -> None:
        write_sealed(self.path, self.key_path, _MAGIC, {"text": text, "policy": view})

    def locked(self) -> Any:
        return locked(self.lock_path)


def accept_policy(
    paths: Paths,
    approvals: Approvals,
    text: str,
    baseline: View,
    held: Held,
    by: str | None,
    code: str | None,
) -> dict[str, Any]:
    """Make `text` (a whole config.toml) the approved policy. When it widens the approved
    one (`baseline` when none was kept yet) or lowers a tier, and an approver exists, an
    approver's code is needed (CodeNeeded / CodeRefused, nothing changed). Returns
    {"approver": NAME or None, "widened": [what, ...]}."""
    proposed = settings_from_text(paths.config_file, text)
    view = policy_view(proposed)
    store = PolicyStore(paths)
    with store.locked():
        kept = store.load()
        before = kept["policy"] if kept is not None else baseline
        approvals.load()
        lower = lowered(approvals, proposed)
        widened = widenings(before, view, held)
        widened += [f"secret {n} lowered to {t} ({a} approvals)" for n, (t, a) in lower.items()]

        def work(state: ApprovalsState) -> str:
            if not widened:
                return ""
            approver = approvals._consent(
                state, by, code, "widen the policy: " + "; ".join(widened)
            )
            for name, (tier, needed) in lower.items():
                state.floors[name] = Floor(tier, needed)
            return approver

        approver = approvals.edit(work)
        try:
            store.save(text, view)
        except BlindkeyError:
            if approver:
                raise
            # No approver, no gate (a home without a vault key: a proxy's own): the
            # broker's next reload takes the file as its baseline.
    names, old, new = changed_keys(before, view)
    return {
        "approver": approver or None,
        "widened": widened,
        "names": names,
        "before": old,
        "after": new,
    }
