"""Narrowed tokens (`blindkey agent token`): each axis narrows, none widens past the parent's
policy, expiry ends it, and revoking or re-adding the parent kills it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from blindkey.broker.agents import AgentError, AgentStore
from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.state import BrokerAnswer, BrokerState
from blindkey.broker.vault import FileVault
from blindkey.config.atomic import write_atomic
from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG

POLICY = """
[secrets.GH]
hosts = ["api.github.com", "uploads.github.com"]
methods = ["GET", "POST"]

[secrets.OTHER]

[secrets.BOUND]
agents = ["someone"]
"""
GITHUB = ("https", "api.github.com", 443)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    home: Paths
    state: BrokerState
    clock: Clock
    store: AgentStore
    parent: str

    def narrow(self, **limits: tuple[str, ...]) -> str:
        _, token = self.store.narrow("orch", 3600, **limits)
        assert self.state.refresh() is True
        return token

    def call(
        self, token: str, names: list[str], target: tuple[str, str, int] = GITHUB,
        method: str = "GET", path: str = "/repos/acme/x",
    ) -> BrokerAnswer:  # fmt: skip
        scheme, host, port = target
        return self.state.resolve(token, names, host, scheme, port, method, path)


def refused(answer: BrokerAnswer) -> tuple[str, str | None] | None:
    return None if answer.denied is None else (answer.denied.code, answer.denied.detail)


def code(answer: BrokerAnswer) -> str | None:
    return None if answer.denied is None else answer.denied.code


def detail(answer: BrokerAnswer) -> str:
    return "" if answer.denied is None else str(answer.denied.detail)


def make_world(home: Paths, mode: str = "enforce") -> World:
    text = DEFAULT_CONFIG.replace('mode = "enforce"', f'mode = "{mode}"')
    write_atomic(home.config_file, (text + POLICY).encode())
    vault = FileVault(home)
    for name in ("GH", "OTHER", "BOUND"):
        vault.set("development", name, f"{name.lower()}-value-0123456789")
    store = AgentStore(home.agents_file, home.lock_file)
    parent = store.add("orch")
    clock = Clock()
    state = BrokerState(home, clock=clock)
    assert state.refresh() is True
    return World(home, state, clock, store, parent)


@pytest.fixture
def world(home: Paths) -> Iterator[World]:
    built = make_world(home)
    yield built
    built.state.close()


def test_a_token_narrowed_to_secrets_uses_those_only(world: World) -> None:
    token = world.narrow(secrets=("GH",))
    assert refused(world.call(token, ["GH"])) is None
    assert world.call(token, ["GH"]).agent == "orch"  # it acts as its parent
    name = world.call(token, ["OTHER"]).denied
    assert name is not None and name.code == "secret_denied"
    assert name.detail is not None and name.detail.endswith(".secrets")
    assert code(world.call(token, ["GH", "OTHER"])) == "secret_denied"
    assert refused(world.call(world.parent, ["OTHER"])) is None  # the parent still may


def test_a_token_narrowed_to_hosts_calls_those_only(world: World) -> None:
    token = world.narrow(hosts=("api.github.com",))
    assert refused(world.call(token, ["GH"])) is None
    uploads = ("https", "uploads.github.com", 443)
    assert code(world.call(token, ["GH"], uploads)) == "secret_denied"
    # Port and scheme are part of the host, as in [secrets.NAME] hosts.
    assert refused(world.call(token, ["GH"], ("https", "api.github.com", 8443))) is not None
    assert refused(world.call(token, ["GH"], ("http", "api.github.com", 443))) is not None
    assert refused(world.call(world.parent, ["GH"], uploads)) is None


def test_a_token_narrowed_to_methods_and_paths_keeps_to_them(world: World) -> None:
    token = world.narrow(methods=("GET",), paths=("/repos/acme/**",))
    assert refused(world.call(token, ["GH"])) is None
    post = world.call(token, ["GH"], method="POST")
    assert detail(post).endswith(".methods")
    for path in ("/admin", "/repos/acme/../../admin", "/repos/acme%2F..%2Fadmin", "/repos/acmex"):
        answer = world.call(token, ["GH"], path=path)
        assert detail(answer).endswith(".paths"), path
    assert refused(world.call(world.parent, ["GH"], path="/admin")) is None


def test_a_narrowed_token_never_does_what_its_parent_may_not(world: World) -> None:
    # Named in the token, refused by the parent's policy all the same.
    token = world.narrow(secrets=("BOUND", "GH"), methods=("DELETE", "GET"),
                         hosts=("api.github.com", "evil.example"))  # fmt: skip
    assert code(world.call(token, ["BOUND"])) == "secret_denied"
    delete = world.call(token, ["GH"], method="DELETE")
    assert refused(delete) == ("secret_denied", "secrets.GH.methods")
    evil = world.call(token, ["GH"], ("https", "evil.example", 443))
    assert code(evil) == "secret_denied"
    # No token narrows a narrowed token (it has no agent to stand for).
    narrowed_name = next(n for n in world.store.load() if "~" in n)
    with pytest.raises(AgentError):
        world.store.narrow(narrowed_name, 60)


def test_report_mode_never_relaxes_a_tokens_own_limits(home: Paths) -> None:
    world = make_world(home, mode="report")
    try:
        token = world.narrow(methods=("GET",), secrets=("GH",))
        assert refused(world.call(token, ["GH"], method="POST")) is not None
        assert refused(world.call(token, ["OTHER"])) is not None
    finally:
        world.state.close()


def test_a_narrowed_token_ends_at_its_ttl(world: World) -> None:
    token = world.narrow()
    assert refused(world.call(token, ["GH"])) is None
    assert world.call(token, ["GH"]).rules.varies == "each"  # never kept by a proxy
    world.clock.now += 3601
    with pytest.raises(BrokerDenied) as expired:
        world.call(token, ["GH"])
    assert expired.value.code == "unauthenticated"


def test_a_narrowed_token_dies_with_its_parent_and_stays_dead(world: World) -> None:
    token = world.narrow()
    world.store.revoke("orch")
    world.state.refresh()
    with pytest.raises(BrokerDenied):
        world.call(token, ["GH"])
    world.store.add("orch")  # the same name again: a new token, not the old one's heir
    world.state.refresh()
    with pytest.raises(BrokerDenied):
        world.call(token, ["GH"])


def test_a_narrowed_token_gets_no_value_outside_the_proxy(world: World) -> None:
    token = world.narrow(secrets=("GH",))
    assert world.state.authenticate(world.parent) == "orch"
    with pytest.raises(BrokerDenied) as released:
        world.state.authenticate(token)  # env, exec and mcp ask this way
    assert released.value.code == "unauthenticated"


def test_ttl_and_parent_are_checked(world: World) -> None:
    for ttl in (0, -1, 31 * 86400):
        with pytest.raises(AgentError):
            world.store.narrow("orch", ttl)
    with pytest.raises(AgentError):
        world.store.narrow("nobody", 60)
