"""oauth2 secrets: the broker mints access tokens from a real local token endpoint, keeps
them until 60 s before they expire, fetches once for many callers, stores a rotated refresh
token before using it, and never hands the refresh token or client secret to anyone."""

from __future__ import annotations

import asyncio
import logging
import socket

import orjson
import pytest

from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.server import BrokerServer
from blindkey.config.paths import Paths
from tests.broker.conftest import Brokers, until
from tests.broker.credentials.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    FIRST_REFRESH,
    TokenServer,
)
from tests.broker.credentials.helpers import (
    Clock,
    configure,
    everything_written,
    resolve,
    store,
    stored,
)


def refreshing(url: str, name: str = "GOOGLE") -> str:
    return f'\n[secrets.{name}]\nkind = "oauth2"\ntoken_url = "{url}"\nclient_id = "{CLIENT_ID}"\n'


def google(home: Paths, token_server: TokenServer) -> str:
    """GOOGLE, an oauth2 secret refreshed at the token server (allowlisted), stored with its
    first refresh token; the agent's token."""
    agent = configure(home, refreshing(token_server.url), [token_server.url[:-6]])
    store(home, GOOGLE=FIRST_REFRESH)
    return agent


def client_credentials(url: str, auth: str) -> str:
    return (
        f'\n[secrets.SVC]\nkind = "oauth2"\ngrant = "client_credentials"\ntoken_url = "{url}"\n'
        f'client_id = "{CLIENT_ID}"\nclient_auth = "{auth}"\nscope = "read write"\n'
    )


async def started(brokers: Brokers, paths: Paths, clock: Clock | None = None) -> BrokerServer:
    server = await brokers.start(paths)
    if clock is not None:
        server.state.credentials.clock = clock
    return server


@pytest.mark.parametrize("auth", ["basic", "post"])
async def test_client_credentials(
    auth: str, home: Paths, brokers: Brokers, token_server: TokenServer
) -> None:
    agent = configure(home, client_credentials(token_server.url, auth), [token_server.url[:-6]])
    store(home, SVC=CLIENT_SECRET)
    server = await started(brokers, home)
    reply = await resolve(brokers.client(server), agent, "SVC")
    assert reply["values"] == {"SVC": token_server.issued[0]}
    form = token_server.forms[0]
    assert form["grant_type"] == "client_credentials" and form["scope"] == "read write"
    # Basic: the secret is in the header only; post: in the form.
    assert ("client_secret" in form) == (auth == "post")


async def test_refresh_token_rotated_on_every_use(
    home: Paths, brokers: Brokers, token_server: TokenServer
) -> None:
    clock = Clock()
    agent = google(home, token_server)
    server = await started(brokers, home, clock)
    client = brokers.client(server)
    placeholder = (await client.call("placeholders", env="development"))["placeholders"]
    seen = []
    for _ in range(3):
        reply = await resolve(client, agent, "GOOGLE")
        seen.append(reply["values"]["GOOGLE"])
        # Stored before the token it came with was handed out.
        assert stored(home, "GOOGLE") == token_server.newest_refresh()
        clock.now += 3600
        server.state.expire()
    assert seen == token_server.issued and len(set(seen)) == 3
    assert token_server.refused == []  # never an old refresh token
    used = [f["refresh_token"] for f in token_server.forms]
    assert used[0] == FIRST_REFRESH and len(set(used)) == 3
    # Proxy mode: a program's placeholder outlives every rotation.
    server.state.refresh()
    assert server.state.view is not None
    assert server.state.view.lookup("development", "GOOGLE") == token_server.newest_refresh()
    assert (await client.call("placeholders", env="development"))["placeholders"] == placeholder


async def test_kept_until_a_minute_before_expiry(
    home: Paths, brokers: Brokers, token_server: TokenServer
) -> None:
    clock = Clock()
    agent = google(home, token_server)
    server = await started(brokers, home, clock)
    client = brokers.client(server)
    first = (await resolve(client, agent, "GOOGLE"))["values"]["GOOGLE"]
    clock.now += 3600 - 61
    assert not server.state.expire()
    assert (await resolve(client, agent, "GOOGLE"))["values"]["GOOGLE"] == first
    pushed: list[object] = []
    watcher = brokers.client(server, on_push=pushed.append)
    await resolve(watcher, agent, "GOOGLE")
    clock.now += 2
    assert server.state.expire()  # due: the proxies are told to forget it
    await until(lambda: bool(pushed))
    second = (await resolve(client, agent, "GOOGLE"))["values"]["GOOGLE"]
    assert second != first and token_server.issued == [first, second]


async def test_two_callers_at_once_one_fetch(
    home: Paths, brokers: Brokers, token_server: TokenServer
) -> None:
    agent = google(home, token_server)
    server = await started(brokers, home)
    token_server.fault = "hold"
    calls = [
        asyncio.create_task(resolve(brokers.client(server), agent, "GOOGLE")) for _ in range(2)
    ]
    # Both requests are in the broker and the endpoint has been asked once.
    await until(lambda: len(token_server.forms) == 1 and len(server._tasks) == 2)
    token_server.fault = ""
    token_server.release.set()
    replies = await asyncio.gather(*calls)
    assert len(token_server.forms) == 1
    assert [r["values"] for r in replies] == [{"GOOGLE": token_server.issued[0]}] * 2


async def test_restart_keeps_the_rotated_refresh_token(
    home: Paths, brokers: Brokers, token_server: TokenServer
) -> None:
    agent = google(home, token_server)
    first = await started(brokers, home)
    await resolve(brokers.client(first), agent, "GOOGLE")
    await brokers.stop(first)
    second = await started(brokers, home)
    reply = await resolve(brokers.client(second), agent, "GOOGLE")
    assert reply["values"] == {"GOOGLE": token_server.issued[1]}
    assert token_server.refused == []


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        ("400", "upstream_error", "answered 400 invalid_grant"),
        ("garbage", "upstream_error", "answered 200 with no JSON object"),
        ("hold", "upstream_timeout", "did not answer in time"),
        ("down", "upstream_error", "cannot be reached"),
    ],
)
async def test_a_failed_fetch_is_a_clear_error(
    fault: str,
    code: str,
    message: str,
    home: Paths,
    brokers: Brokers,
    token_server: TokenServer,
) -> None:
    url = token_server.url
    if fault == "down":
        url = f"http://127.0.0.1:{_closed_port()}/token"
    agent = configure(home, refreshing(url), [url[:-6]], timeout="1s")
    store(home, GOOGLE=FIRST_REFRESH)
    server = await started(brokers, home)
    token_server.fault = fault
    with pytest.raises(BrokerDenied) as refused:
        await resolve(brokers.client(server), agent, "GOOGLE")
    assert refused.value.code == code
    assert f"token endpoint 127.0.0.1 of GOOGLE {message}" in str(refused.value)


async def test_token_endpoint_must_be_allowlisted(
    home: Paths, brokers: Brokers, token_server: TokenServer
) -> None:
    agent = configure(home, refreshing(token_server.url), [])
    store(home, GOOGLE=FIRST_REFRESH)
    server = await started(brokers, home)
    with pytest.raises(BrokerDenied) as refused:
        await resolve(brokers.client(server), agent, "GOOGLE")
    assert refused.value.code == "host_not_allowed"
    assert token_server.forms == []


async def test_material_never_leaves_the_broker(
    home: Paths, brokers: Brokers, token_server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Answers (resolve, redaction set, release), records and logs: access tokens only."""
    caplog.set_level(logging.DEBUG)
    secrets = refreshing(token_server.url) + client_credentials(token_server.url, "post")
    agent = configure(home, secrets, [token_server.url[:-6]])
    store(home, GOOGLE=FIRST_REFRESH, SVC=CLIENT_SECRET, PLAIN="plain-value-1234")
    server = await started(brokers, home)
    client = brokers.client(server)
    answers = [await resolve(client, agent, "GOOGLE", "SVC")]
    answers.append(await client.call("redaction_set"))
    assert set(answers[1]["values"]) == {"GOOGLE", "SVC", "PLAIN"}
    assert set(answers[1]["values"].values()) >= set(token_server.issued)
    token_server.fault = "400"
    server.state.credentials.clock = Clock(10**12)
    with pytest.raises(BrokerDenied) as refused:
        await resolve(client, agent, "GOOGLE")
    denied = server.state.check_release("claude", "development", "GOOGLE", "env")
    assert denied is not None and "not released to env" in str(denied)
    material = [FIRST_REFRESH, token_server.newest_refresh(), CLIENT_SECRET]
    seen = orjson.dumps(answers) + str(refused.value).encode() + caplog.text.encode()
    seen += everything_written(home)
    for value in material:
        assert value.encode() not in seen
    records = [orjson.loads(line) for line in everything_written(home).splitlines()
               if line.startswith(b"{") and b'"event":"token"' in line]  # fmt: skip
    assert [r["status"] for r in records] == [200, 200, 400]
    assert {r["secret"] for r in records} == {"GOOGLE", "SVC"}
