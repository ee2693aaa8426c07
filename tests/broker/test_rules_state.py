"""Rates, report mode and the policy gate, through the broker's state as a resolve meets them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.policy import policy_view, widenings
from blindkey.broker.rules import THIS_CALL
from blindkey.broker.state import BrokerAnswer, BrokerState
from blindkey.broker.vault import FileVault
from blindkey.config.atomic import write_atomic
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.config.request_rules import AgentPolicy, PolicySettings, parse_rate
from blindkey.config.secrets_table import SecretPolicy
from blindkey.config.template import DEFAULT_CONFIG

RULES = """
[secrets.GH]
hosts = ["api.github.com"]
methods = ["GET"]
paths = ["/repos/acme/**"]
rate = "3/min"

[secrets.OTHER]
rate = "10/s"

[secrets.BOUND]
agents = ["someone"]
methods = ["GET"]

[secrets.CTRL]
tier = "controlled"
rate = "1/h"

[agents.builder]
rate = "2/s"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    state: BrokerState
    clock: Clock
    claude: str
    builder: str

    def call(
        self, token: str, names: list[str], path: str = "/repos/acme/w", method: str = "GET"
    ) -> BrokerAnswer:
        return self.state.resolve(token, names, "api.github.com", "https", 443, method, path)


def make_world(home: Paths, mode: str = "enforce") -> World:
    text = DEFAULT_CONFIG.replace('mode = "enforce"', f'mode = "{mode}"')
    write_atomic(home.config_file, (text + RULES).encode())
    vault = FileVault(home)
    for name in ("GH", "OTHER", "BOUND", "CTRL"):
        vault.set("development", name, f"{name.lower()}-value-123456")
    agents = AgentStore(home.agents_file, home.lock_file)
    claude, builder = agents.add("claude"), agents.add("builder")
    clock = Clock()
    state = BrokerState(home, clock=clock)
    assert state.refresh() is True and state.last_error is None
    return World(state, clock, claude, builder)


@pytest.fixture
def world(home: Paths) -> World:
    return make_world(home)


def test_a_rate_is_a_token_bucket_per_agent_with_a_retry_after(world: World) -> None:
    for _ in range(3):
        answer = world.call(world.claude, ["GH"])
        assert answer.denied is None and answer.rules.varies == THIS_CALL
    refused = world.call(world.claude, ["GH"]).denied
    assert refused is not None and refused.code == "rate_limited"
    assert refused.detail == "secrets.GH.rate" and refused.retry_after == 20  # 3/min: one per 20 s
    assert "3/min" in str(refused) and "claude" in str(refused)
    # Another agent using the same secret has a bucket of its own.
    assert world.call(world.builder, ["GH"]).denied is None
    world.clock.now += 19.5
    refused = world.call(world.claude, ["GH"]).denied
    assert refused is not None and refused.retry_after == 1
    world.clock.now += 0.5
    assert world.call(world.claude, ["GH"]).denied is None
    assert world.call(world.claude, ["GH"]).denied is not None
    # The bucket holds at most the count: a long pause does not bank more.
    world.clock.now += 3600
    assert [world.call(world.claude, ["GH"]).denied is None for _ in range(4)] == [
        True, True, True, False,
    ]  # fmt: skip


def test_an_agent_rate_counts_its_calls_with_every_secret(world: World) -> None:
    assert world.call(world.builder, ["OTHER"]).denied is None
    assert world.call(world.builder, ["GH"]).denied is None
    refused = world.call(world.builder, ["OTHER"]).denied
    assert refused is not None and refused.code == "rate_limited"
    assert refused.detail == "agents.builder.rate" and refused.retry_after == 1
    world.clock.now += 0.5
    assert world.call(world.builder, ["OTHER"]).denied is None


def test_a_refused_call_takes_nothing_from_any_bucket(world: World) -> None:
    # Refused by the path rule, by the binding, or by the tier: none of them is counted.
    for _ in range(5):
        assert world.call(world.claude, ["GH"], path="/admin").denied is not None
        assert world.call(world.claude, ["GH"], method="DELETE").denied is not None
        assert world.call(world.claude, ["GH", "BOUND"]).denied is not None
        refused = world.call(world.claude, ["CTRL"]).denied
        assert refused is not None and refused.code == "approval_required"
    assert [world.call(world.claude, ["GH"]).denied is None for _ in range(4)] == [
        True, True, True, False,
    ]  # fmt: skip
    # One bucket short refuses the call, and the others keep what they had.
    assert world.call(world.claude, ["GH", "OTHER"]).denied is not None
    for _ in range(10):
        assert world.call(world.claude, ["OTHER"]).denied is None


def test_a_reload_keeps_buckets_of_unchanged_rules_and_drops_changed_ones(
    home: Paths, world: World
) -> None:
    for _ in range(3):
        world.call(world.claude, ["GH"])
    assert world.state.reread()
    assert world.call(world.claude, ["GH"]).denied is not None  # a reload refills nothing
    write_atomic(home.config_file, (DEFAULT_CONFIG + RULES.replace("3/min", "4/min")).encode())
    assert world.state.reread()
    assert world.call(world.claude, ["GH"]).denied is None  # a new rule: a new bucket


def test_report_mode_records_what_would_be_refused_and_refuses_nothing_of_it(
    home: Paths,
) -> None:
    world = make_world(home, "report")
    answer = world.call(world.claude, ["GH"], path="/admin", method="DELETE")
    assert answer.denied is None and answer.values == {"GH": "gh-value-123456"}
    assert answer.rules.would_deny is not None
    assert answer.rules.would_deny["error"] == "secret_denied"
    assert answer.rules.would_deny["detail"] == "secrets.GH.methods"
    # A call the rules would refuse is not counted (enforcing, it would not have been).
    for _ in range(3):
        assert world.call(world.claude, ["GH"]).rules.would_deny is None
    answer = world.call(world.claude, ["GH"])
    assert answer.denied is None and answer.rules.would_deny is not None
    assert answer.rules.would_deny["error"] == "rate_limited"
    assert answer.rules.would_deny["detail"] == "secrets.GH.rate"
    # Bindings, hosts and tiers are enforced whatever the mode.
    bound = world.call(world.claude, ["BOUND"]).denied
    assert bound is not None and bound.code == "secret_denied"
    tier = world.call(world.claude, ["CTRL"]).denied
    assert tier is not None and tier.code == "approval_required"
    host = world.state.resolve(world.claude, ["GH"], "evil.example", "https", 443, "GET", "/")
    assert host.denied is not None and host.denied.code == "secret_denied"


def view(**fields: object) -> dict[str, object]:
    agents = fields.pop("agents", {})
    mode = str(fields.pop("mode", "enforce"))
    secret = SecretPolicy(**fields)  # type: ignore[arg-type]
    return policy_view(
        Settings(secrets={"K": secret}, agents=agents, request_policy=PolicySettings(mode))  # type: ignore[arg-type]
    )


WIDER = [
    # before, after, what the gate says
    ({"methods": ("GET",)}, {}, "secret K may use any methods"),
    ({"methods": ("GET",)}, {"methods": ("GET", "DELETE")}, "secret K may use DELETE"),
    ({"paths": ("/user",)}, {}, "secret K may use any paths"),
    ({"paths": ("/user",)}, {"paths": ("/user", "/admin")}, "secret K may use /admin"),
    ({"rate": parse_rate("10/min")}, {}, "secret K may call without a rate limit"),
    ({"rate": parse_rate("10/min")}, {"rate": parse_rate("1/s")}, "secret K may call 1/s"),
    (
        {"agents": {"b": AgentPolicy(methods=("GET",))}},
        {},
        "agent b may use any methods",
    ),
    (
        {"agents": {"b": AgentPolicy(rate=parse_rate("5/s"))}},
        {"agents": {"b": AgentPolicy(rate=parse_rate("6/s"))}},
        "agent b may call 6/s",
    ),
    ({}, {"mode": "report"}, "[policy] mode = report"),
]


@pytest.mark.parametrize(("before", "after", "said"), WIDER)
def test_removing_or_loosening_a_rule_widens_and_the_reverse_does_not(
    before: dict[str, object], after: dict[str, object], said: str
) -> None:
    old, new = view(**before), view(**after)
    found = widenings(old, new, lambda name: True)
    assert any(said in item for item in found), found
    assert widenings(new, old, lambda name: True) == []


def test_a_policy_kept_before_the_rule_keys_existed_had_no_rules() -> None:
    old = view()
    for key in ("methods", "paths", "rate"):
        del old["secrets"]["K"][key]  # type: ignore[index]
    del old["agents"], old["policy_mode"]
    assert widenings(old, view(), lambda name: True) == []
    assert widenings(old, view(mode="report"), lambda name: True)


def test_a_glob_replaced_by_another_is_a_widening_either_way() -> None:
    """Globs are compared as text, not as the sets of paths they match: a replaced glob
    needs a code even when it is narrower (a false alarm, never a missed widening)."""
    broad, narrow = view(paths=("/repos/**",)), view(paths=("/repos/acme/*",))
    assert widenings(narrow, broad, lambda name: True) == ["secret K may use /repos/**"]
    assert widenings(broad, narrow, lambda name: True) == ["secret K may use /repos/acme/*"]
