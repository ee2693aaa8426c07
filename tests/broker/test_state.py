"""BrokerState: the policy each resolve applies, and reloading its three files."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.state import ANONYMOUS, BrokerState
from blindkey.broker.vault import FileVault
from blindkey.config.atomic import write_atomic
from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG

POLICIES = """
[secrets.GH]
hosts = ["api.github.com"]

[secrets.STRIPE]
hosts = ["*.stripe.com"]

[secrets.BOUND_OTHER]
agents = ["other"]

[secrets.BOUND_CLAUDE]
agents = ["claude", "someone"]

[secrets.ENV_ONLY]
release = ["env", "exec"]

[secrets.CTRL]
tier = "controlled"

[secrets.RESTR]
tier = "restricted"
hosts = ["api.github.com"]

[secrets.META_ONLY]
tier = "open"
"""

VALUES = {
    "OPEN": "open-value-1111",
    "GH": "ghp_value_2222",
    "STRIPE": "sk_live_3333",
    "BOUND_OTHER": "bound-other-4444",
    "BOUND_CLAUDE": "bound-claude-5555",
    "ENV_ONLY": "env-only-6666",
    "CTRL": "controlled-7777",
    "RESTR": "restricted-8888",
}


def write_config(paths: Paths, extra: str = POLICIES, **replace: str) -> None:
    text = DEFAULT_CONFIG
    for old, new in replace.items():
        old_line = {"token": "require_agent_token = true", "active": 'active = "development"'}[old]
        assert old_line in text
        text = text.replace(old_line, new)
    write_atomic(paths.config_file, (text + extra).encode())


@dataclass
class World:
    paths: Paths
    state: BrokerState
    token: str
    other_token: str


@pytest.fixture
def world(home: Paths) -> World:
    write_config(home)
    vault = FileVault(home)
    for name, value in VALUES.items():
        vault.set("development", name, value)
    vault.set("staging", "STAGING_ONLY", "staging-9999")
    vault.set("staging", "OPEN", "open-staging-0000")
    agents = AgentStore(home.agents_file, home.lock_file)
    token = agents.add("claude")
    other = agents.add("other")
    state = BrokerState(home)
    assert state.refresh() is True
    assert state.last_error is None
    return World(home, state, token, other)


CASES = [
    # names, host, expected code (None: the values are released)
    (["OPEN"], "example.com", None),
    (["OPEN", "GH"], "api.github.com", None),
    (["NOPE"], "api.github.com", "unknown_secret"),
    (["META_ONLY"], "api.github.com", "unknown_secret"),
    (["STAGING_ONLY"], "api.github.com", "unknown_secret"),
    (["GH"], "api.github.com", None),
    (["GH"], "api.stripe.com", "secret_denied"),
    (["GH"], "github.com", "secret_denied"),
    (["GH"], "evil.api.github.com", "secret_denied"),
    (["GH"], "api.github.com.evil.io", "secret_denied"),
    (["STRIPE"], "api.stripe.com", None),
    (["STRIPE"], "a.b.stripe.com", None),
    (["STRIPE"], "stripe.com", "secret_denied"),
    (["STRIPE"], "evilstripe.com", "secret_denied"),
    (["STRIPE"], "api.stripe.com.evil.io", "secret_denied"),
    (["STRIPE"], "api.github.com", "secret_denied"),
    (["BOUND_OTHER"], "example.com", "secret_denied"),
    (["BOUND_CLAUDE"], "example.com", None),
    (["ENV_ONLY"], "example.com", "secret_denied"),
    (["CTRL"], "example.com", "approval_required"),
    (["RESTR"], "api.github.com", "approval_required"),
    # one refused name refuses the whole call: no partial release
    (["OPEN", "GH"], "api.stripe.com", "secret_denied"),
    (["OPEN", "CTRL"], "example.com", "approval_required"),
    (["OPEN", "NOPE"], "example.com", "unknown_secret"),
    ([], "example.com", None),
]


@pytest.mark.parametrize(("names", "host", "code"), CASES)
def test_policy_table(world: World, names: list[str], host: str, code: str | None) -> None:
    result = world.state.resolve(world.token, names, host)

    assert result.agent == "claude"
    assert result.env == "development"
    if code is None:
        assert result.denied is None
        assert result.values == {n: VALUES[n] for n in names}
    else:
        assert result.denied is not None
        assert result.denied.code == code
        assert result.values == {}
        for value in VALUES.values():
            assert value not in str(result.denied)


def test_secret_bound_to_an_agent_is_released_to_that_agent(world: World) -> None:
    result = world.state.resolve(world.other_token, ["BOUND_OTHER"], "example.com")
    assert result.agent == "other"
    assert result.denied is None
    assert result.values == {"BOUND_OTHER": VALUES["BOUND_OTHER"]}
    denied = world.state.resolve(world.other_token, ["BOUND_CLAUDE"], "example.com").denied
    assert denied is not None
    assert denied.code == "secret_denied"


@pytest.mark.parametrize("token", [None, "", "bk_not-a-real-token", "x" * 500])
def test_missing_or_unknown_token_is_unauthenticated(world: World, token: str | None) -> None:
    with pytest.raises(BrokerDenied) as info:
        world.state.resolve(token, ["OPEN"], "example.com")
    assert info.value.code == "unauthenticated"


def test_hash_of_a_token_is_not_a_token(world: World) -> None:
    record = AgentStore(world.paths.agents_file, world.paths.lock_file).load()["claude"]
    with pytest.raises(BrokerDenied) as info:
        world.state.resolve(record.token_sha256, ["OPEN"], "example.com")
    assert info.value.code == "unauthenticated"


def test_anonymous_when_tokens_are_not_required(world: World) -> None:
    write_config(world.paths, token="require_agent_token = false")
    assert world.state.refresh() is True

    result = world.state.resolve(None, ["OPEN"], "example.com")
    assert result.agent == ANONYMOUS == "anonymous"
    assert result.values == {"OPEN": VALUES["OPEN"]}
    # agent bindings still apply to the anonymous caller
    denied = world.state.resolve(None, ["BOUND_CLAUDE"], "example.com").denied
    assert denied is not None
    assert denied.code == "secret_denied"
    # a token that is sent is still checked: a bad one never falls back to anonymous
    with pytest.raises(BrokerDenied) as info:
        world.state.resolve("bk_bogus", ["OPEN"], "example.com")
    assert info.value.code == "unauthenticated"
    assert world.state.resolve(world.token, ["OPEN"], "example.com").agent == "claude"


def test_revoked_token_is_unauthenticated_after_refresh(world: World) -> None:
    assert world.state.resolve(world.token, ["OPEN"], "example.com").denied is None
    AgentStore(world.paths.agents_file, world.paths.lock_file).revoke("claude")
    assert world.state.refresh() is True

    with pytest.raises(BrokerDenied) as info:
        world.state.resolve(world.token, ["OPEN"], "example.com")
    assert info.value.code == "unauthenticated"
    assert world.state.resolve(world.other_token, ["OPEN"], "example.com").agent == "other"


def test_reissued_agent_token_replaces_the_old_one(world: World) -> None:
    store = AgentStore(world.paths.agents_file, world.paths.lock_file)
    store.revoke("claude")
    new = store.add("claude")
    assert world.state.refresh() is True
    assert world.state.resolve(new, ["OPEN"], "example.com").agent == "claude"
    with pytest.raises(BrokerDenied):
        world.state.resolve(world.token, ["OPEN"], "example.com")


def test_active_environment_selects_the_values(world: World) -> None:
    write_config(world.paths, active='active = "staging"')
    assert world.state.refresh() is True

    result = world.state.resolve(world.token, ["OPEN", "STAGING_ONLY"], "example.com")
    assert result.env == "staging"
    assert result.values == {"OPEN": "open-staging-0000", "STAGING_ONLY": "staging-9999"}
    assert world.state.resolve(world.token, ["GH"], "api.github.com").denied is not None
    assert world.state.redaction_set() == {
        "OPEN": "open-staging-0000",
        "STAGING_ONLY": "staging-9999",
    }


def test_redaction_set_holds_every_value_of_the_active_environment(world: World) -> None:
    assert world.state.redaction_set() == VALUES


def test_refresh_is_a_no_op_when_nothing_changed(world: World) -> None:
    generation = world.state.generation
    assert world.state.refresh() is False
    assert world.state.refresh() is False
    assert world.state.generation == generation


def test_refresh_picks_up_config_changes(world: World) -> None:
    generation = world.state.generation
    write_config(world.paths, extra=POLICIES.replace('hosts = ["api.github.com"]\n', "", 1))
    assert world.state.refresh() is True
    assert world.state.generation == generation + 1
    assert world.state.resolve(world.token, ["GH"], "api.stripe.com").denied is None


def test_refresh_picks_up_vault_changes(world: World) -> None:
    generation = world.state.generation
    FileVault(world.paths).set("development", "OPEN", "rotated-value-1111")  # same length
    assert world.state.refresh() is True
    assert world.state.generation == generation + 1
    assert world.state.resolve(world.token, ["OPEN"], "x.io").values == {
        "OPEN": "rotated-value-1111"
    }

    FileVault(world.paths).delete("development", "OPEN")
    assert world.state.refresh() is True
    assert world.state.generation == generation + 2
    denied = world.state.resolve(world.token, ["OPEN"], "x.io").denied
    assert denied is not None
    assert denied.code == "unknown_secret"


def test_refresh_picks_up_agent_changes(world: World) -> None:
    generation = world.state.generation
    new = AgentStore(world.paths.agents_file, world.paths.lock_file).add("newcomer")
    with pytest.raises(BrokerDenied):
        world.state.resolve(new, ["OPEN"], "x.io")
    assert world.state.refresh() is True
    assert world.state.generation == generation + 1
    assert world.state.resolve(new, ["OPEN"], "x.io").agent == "newcomer"


@pytest.mark.parametrize(
    "broken",
    [
        "[proxy\nport = 1",  # not TOML
        '[proxy]\nport = "eighty"\n',  # wrong type
        "[proxy]\nprot = 1\n",  # unknown key
        '[secrets.GH]\ntier = "secret"\n',  # unknown tier
        "\xff\xfe",  # not UTF-8
    ],
)
def test_broken_config_is_refused_and_last_good_state_kept(
    world: World, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    generation = world.state.generation
    settings = world.state.settings
    world.paths.config_file.write_bytes(broken.encode("latin-1"))

    with caplog.at_level(logging.ERROR, logger="blindkey.broker"):
        assert world.state.refresh() is False
    assert world.state.last_error is not None
    assert str(world.paths.config_file) in world.state.last_error
    assert "reload refused" in caplog.text
    assert world.state.generation == generation
    assert world.state.settings is settings
    # the policy still applies: GH stays bound to api.github.com
    denied = world.state.resolve(world.token, ["GH"], "api.stripe.com").denied
    assert denied is not None
    assert denied.code == "secret_denied"
    assert world.state.resolve(world.token, ["GH"], "api.github.com").values == {"GH": VALUES["GH"]}

    # refused again on the next poll, without logging the same error twice
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="blindkey.broker"):
        assert world.state.refresh() is False
    assert caplog.text == ""

    write_config(world.paths)
    assert world.state.refresh() is True
    assert world.state.last_error is None
    assert world.state.generation == generation + 1


def test_broken_vault_keeps_the_last_good_values(world: World) -> None:
    blob = bytearray(world.paths.vault_file.read_bytes())
    blob[-1] ^= 1
    world.paths.vault_file.write_bytes(bytes(blob))

    assert world.state.refresh() is False
    assert world.state.last_error is not None
    assert "vault" in world.state.last_error
    assert world.state.resolve(world.token, ["OPEN"], "x.io").values == {"OPEN": VALUES["OPEN"]}


def test_broken_agents_file_keeps_the_last_good_agents(world: World) -> None:
    world.paths.agents_file.write_text("{truncated")
    assert world.state.refresh() is False
    assert world.state.last_error is not None
    assert world.state.resolve(world.token, ["OPEN"], "x.io").agent == "claude"


def test_a_fresh_state_serves_nothing_before_refresh(home: Paths) -> None:
    FileVault(home).set("development", "OPEN", "v")
    state = BrokerState(home)
    assert state.generation == 0
    assert state.redaction_set() == {}
    with pytest.raises(BrokerDenied):
        state.resolve("bk_x", ["OPEN"], "x.io")
