"""The device flow's pacing and endings (RFC 8628 3.5) against the local authorisation
server: slow_down adds five seconds to the interval, expired_token and access_denied end
the login with what happened, and a code past its lifetime is not polled again. The sleep
and the clock are injected (the server's pace is seconds; the test does not wait them)."""

from __future__ import annotations

import asyncio

import pytest

from blindkey.broker.credentials.device import device_flow
from blindkey.broker.credentials.login import Client, LoginError
from tests.broker.credentials.test_oauth_login import CLIENT_ID, REFRESH, AuthServer, auth_server

__all__ = ["auth_server"]  # the fixture, shared with the login tests


class Pace:
    """An injected clock whose sleep only moves it on, and records how long it was asked."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _client(server: AuthServer) -> Client:
    return Client(f"{server.url}/token", CLIENT_ID, device_url=f"{server.url}/device")


async def _login(server: AuthServer, pace: Pace) -> str:
    told: list[str] = []
    return await asyncio.to_thread(
        device_flow, _client(server), told.append, sleep=pace.sleep, clock=pace.clock
    )


async def test_slow_down_adds_five_seconds_each_time(auth_server: AuthServer) -> None:
    auth_server.device_answers = ["authorization_pending", "slow_down", "authorization_pending",
                                  "slow_down", "authorization_pending"]  # fmt: skip
    pace = Pace()
    assert await _login(auth_server, pace) == REFRESH
    # The server's interval is 0: 0, 0 (then slow_down), 5, 5 (slow_down), 10, 10.
    assert pace.slept == [0, 0, 5, 5, 10, 10]


@pytest.mark.parametrize(
    ("error", "said"),
    [("expired_token", "device code expired"), ("access_denied", "access was denied")],
)
async def test_an_ending_answer_ends_the_login(
    auth_server: AuthServer, error: str, said: str
) -> None:
    auth_server.device_answers = ["authorization_pending", error, "authorization_pending"]
    with pytest.raises(LoginError, match=said):
        await _login(auth_server, Pace())
    assert len(auth_server.token_forms) == 2  # nothing polled after the end


async def test_a_code_past_its_lifetime_is_not_polled(auth_server: AuthServer) -> None:
    """expires_in is 60 s: slow_downs push the next poll past it, and blindkey stops."""
    auth_server.device_answers = ["slow_down"] * 20
    pace = Pace()
    with pytest.raises(LoginError, match="expired"):
        await _login(auth_server, pace)
    assert sum(pace.slept) <= 60 and auth_server.device_answers  # stopped before the end


async def test_an_error_of_the_device_endpoint_is_said(auth_server: AuthServer) -> None:
    client = Client(f"{auth_server.url}/token", "another-client",
                    device_url=f"{auth_server.url}/token")  # fmt: skip
    with pytest.raises(LoginError, match="answered 400 invalid_grant"):
        await asyncio.to_thread(device_flow, client, print)
