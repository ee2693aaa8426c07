"""Rates decided with leases: the proxy's decision cache (Authoriser) against a real broker
on this event loop, both on one injected clock. A rated call is a broker round trip only
when a lease runs out, and the limit is still the rule's, to the call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.client import BrokerClient
from blindkey.broker.peer import Client
from blindkey.broker.protocol import BrokerDenied, Message
from blindkey.broker.server import BrokerServer
from blindkey.broker.vault import FileVault
from blindkey.config.atomic import write_atomic
from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG
from blindkey.proxy.request.authorise import Authoriser, Grant
from tests.broker.conftest import Brokers

RULES = """
[secrets.GH]
hosts = ["api.github.com"]
rate = "{rate}"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """A broker and a proxy's authoriser, the calls the broker was asked to resolve."""

    home: Paths
    brokers: Brokers
    clock: Clock
    tokens: dict[str, str]
    server: BrokerServer | None = None
    proxy: Authoriser | None = None
    asked: list[Message] = field(default_factory=list)

    async def start(self) -> None:
        self.server = await self.brokers.start(self.home)
        self.server.state.rules.limiter.clock = self.clock
        resolve = self.server.operations["resolve"]

        def counted(request: Message, client: Client) -> Message | None:
            self.asked.append(request)
            return resolve(request, client)

        self.server.operations["resolve"] = counted
        self.proxy = Authoriser(self.server.socket_path, lambda: None, lambda *_: None)
        self.proxy.leases.clock = self.clock

    async def stop(self) -> None:
        assert self.server is not None and self.proxy is not None
        await self.proxy.close()
        await self.brokers.stop(self.server)

    async def call(self, agent: str = "claude", path: str = "/user") -> BrokerDenied | Grant:
        assert self.proxy is not None
        token = self.tokens[agent]
        self.proxy.catch_up()  # as the pipeline does before each call
        _, _, answer = await self.proxy.resolve(
            token, ["GH"], "api.github.com", "https", 443, "GET", path
        )
        return answer

    async def burst(self, calls: int, agent: str = "claude", path: str = "/user") -> list[bool]:
        return [isinstance(await self.call(agent, path), Grant) for _ in range(calls)]

    async def configure(self, rate: str, mode: str = "enforce", more: str = "") -> None:
        """Put a config in force as the CLI does: the broker pushes, the proxy acknowledges."""
        text = DEFAULT_CONFIG.replace('mode = "enforce"', f'mode = "{mode}"')
        text += RULES.format(rate=rate) + more
        write_atomic(self.home.config_file, text.encode())
        if self.server is None:
            return
        cli = BrokerClient(self.server.socket_path)
        try:
            await cli.call("refresh")
        finally:
            await cli.close()


@pytest.fixture
async def world(home: Paths, brokers: Brokers) -> AsyncIterator[World]:
    FileVault(home).set("development", "GH", "gh-value-123456")
    agents = AgentStore(home.agents_file, home.lock_file)
    tokens = {"claude": agents.add("claude"), "builder": agents.add("builder")}
    world = World(home, brokers, Clock(), tokens)
    await world.configure("120/min")
    await world.start()
    yield world
    if world.proxy is not None:
        await world.proxy.close()


def refused(answer: BrokerDenied | Grant) -> BrokerDenied:
    assert isinstance(answer, BrokerDenied), answer
    return answer


async def test_a_burst_of_exactly_count_calls_passes_then_429_with_retry_after(
    world: World,
) -> None:
    assert await world.burst(120) == [True] * 120
    # Most calls were decided by the proxy with calls the broker leased it.
    assert len(world.asked) <= 30, len(world.asked)
    denied = refused(await world.call())
    assert denied.code == "rate_limited" and denied.detail == "secrets.GH.rate"
    assert denied.retry_after == 1  # 120/min: one call every half second
    assert "120/min" in str(denied) and "claude" in str(denied)
    # The refusal is not kept: once the bucket refills, the call passes.
    world.clock.now += 0.5
    assert await world.burst(2) == [True, False]


async def test_the_bucket_refills_at_the_rules_rate_and_never_past_its_count(
    world: World,
) -> None:
    assert await world.burst(121) == [True] * 120 + [False]
    world.clock.now += 10.0  # 20 calls' worth, and the leases of before have settled
    assert await world.burst(21) == [True] * 20 + [False]
    world.clock.now += 3600.0  # a long pause banks no more than the count
    assert await world.burst(121) == [True] * 120 + [False]


async def test_two_agents_have_buckets_of_their_own(world: World) -> None:
    assert await world.burst(121) == [True] * 120 + [False]
    assert await world.burst(121, "builder") == [True] * 120 + [False]
    assert not isinstance(await world.call("claude"), Grant)


async def test_two_proxies_of_one_broker_share_the_bucket_to_the_call(world: World) -> None:
    assert world.server is not None and world.proxy is not None
    other = Authoriser(world.server.socket_path, lambda: None, lambda *_: None)
    other.leases.clock = world.clock
    first = world.proxy
    try:
        passed = 0
        for _ in range(80):
            for proxy in (first, other):
                world.proxy = proxy
                passed += isinstance(await world.call(), Grant)
        assert passed == 120
    finally:
        world.proxy = first
        await other.close()


async def test_calls_leased_for_one_path_serve_the_bucket_for_every_path(world: World) -> None:
    assert await world.burst(100) == [True] * 100
    assert world.proxy is not None and world.proxy.leases.pools  # calls still leased
    # A path not seen yet is decided by the broker, with what this proxy held given back
    # first: the bucket's last 20 calls go wherever they are sent, none is held back.
    paths = [f"/repos/acme/{n}" for n in range(21)]
    passed = [isinstance(await world.call(path=path), Grant) for path in paths]
    assert passed == [True] * 20 + [False]
    assert await world.burst(1) == [False]


async def test_a_reload_that_changes_the_rate_voids_the_leases_of_the_old_one(
    world: World,
) -> None:
    # (The first call of a connection keeps nothing: it connected while asking.)
    assert await world.burst(2) == [True, True]
    assert world.proxy is not None and world.proxy.leases.pools, "the first call leases more"
    await world.configure("2/min")
    # The calls leased under 120/min are spent no more: the new rule's two calls, then 429.
    assert await world.burst(3) == [True, True, False]
    denied = refused(await world.call())
    assert denied.retry_after == 30 and "2/min" in str(denied)
    # What the proxy held of the old lease went back with its next request (and was
    # ignored: the bucket it came from is gone).
    given = [r["settle"] for r in world.asked if "settle" in r]
    assert given[-1][0][1] > 0


async def test_report_mode_records_would_deny_past_the_rate_and_refuses_nothing(
    world: World,
) -> None:
    await world.configure("120/min", mode="report")
    answers = [await world.call() for _ in range(125)]
    assert all(isinstance(a, Grant) for a in answers)
    would = [a.would_deny for a in answers if isinstance(a, Grant)]
    assert would[:120] == [None] * 120
    assert all(w is not None and w["detail"] == "secrets.GH.rate" for w in would[120:])


async def test_calls_decided_one_by_one_get_no_lease(world: World) -> None:
    # A budget changes with every answer, a narrowed token expires: the broker sees each.
    _, world.tokens["narrowed"] = AgentStore(world.home.agents_file, world.home.lock_file).narrow(
        "claude", 3600.0
    )
    await world.configure("120/min", more="[agents.builder]\nbudget = { daily_usd = 5.0 }\n")
    for agent in ("builder", "narrowed"):
        before = len(world.asked)
        assert await world.burst(20, agent) == [True] * 20
        assert len(world.asked) - before == 20
    assert world.proxy is not None and not world.proxy.leases.pools


async def test_a_restart_of_broker_and_proxy_does_not_refill_the_bucket(
    world: World,
) -> None:
    before = await world.burst(100)
    assert before == [True] * 100
    assert world.proxy is not None and world.proxy.leases.pools  # calls still leased
    await world.stop()
    # Calls the old proxy held unspent count as spent: the bound is the rule, never more.
    await world.start()
    after = await world.burst(40)
    passed = after.count(True)
    assert after == [True] * passed + [False] * (40 - passed)
    # Never more than the rule's 20 left; what leasing costs across a restart: at most the
    # one lease of 10 calls (2/s for REFILL_WORTH) the old proxy held unspent.
    assert 10 <= passed <= 20
