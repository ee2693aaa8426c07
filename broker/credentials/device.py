"""The device authorisation grant (RFC 8628), for `oauth login --device-url`: for a machine
with no browser, or one where the loopback redirect cannot be reached. The user opens a
URL anywhere and types a short code; blindkey polls the token endpoint at the pace the
server sets (`interval`, five seconds more after each `slow_down`) until the user allows
or denies, or the code expires."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from blindkey.broker.credentials.login import (
    Announce,
    Client,
    LoginError,
    check_endpoint,
    post_form,
    refresh_token_of,
    refused,
)

GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5  # RFC 8628 3.2: when the server names none
SLOW_DOWN = 5  # RFC 8628 3.5: seconds added to the interval on every slow_down
DEFAULT_LIFETIME = 600


def _number(answer: dict[str, Any], key: str, default: int) -> int:
    value = answer.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return default
    return value


def _start(client: Client) -> dict[str, Any]:
    form = {"client_id": client.client_id}
    if client.scope:
        form["scope"] = client.scope
    status, answer = post_form(client.device_url, form)
    if status != 200 or "error" in answer:
        raise refused(client.device_url, status, answer)
    for key in ("device_code", "user_code", "verification_uri"):
        if not isinstance(answer.get(key), str) or not answer[key]:
            raise LoginError(f"the device endpoint's answer has no {key}")
    return answer


def device_flow(
    client: Client,
    announce: Announce,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """The refresh token, once the user has allowed this device."""
    check_endpoint("--device-url", client.device_url)
    check_endpoint("--token-url", client.token_url)
    started = _start(client)
    where = started.get("verification_uri_complete") or started["verification_uri"]
    announce(
        f"Open {where} on any device and enter the code {started['user_code']} "
        "(blindkey waits here)"
    )
    interval = _number(started, "interval", DEFAULT_INTERVAL)
    deadline = clock() + _number(started, "expires_in", DEFAULT_LIFETIME)
    form = {"grant_type": GRANT, "device_code": started["device_code"],
            "client_id": client.client_id}  # fmt: skip
    while True:
        if clock() + interval > deadline:
            raise LoginError("the device code expired before access was allowed; nothing stored")
        sleep(interval)
        status, answer = post_form(client.token_url, form)
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN
            continue
        if error == "expired_token":
            raise LoginError("the device code expired before access was allowed; nothing stored")
        if error == "access_denied":
            raise LoginError("access was denied at the authorisation server; nothing stored")
        return refresh_token_of(client.token_url, status, answer)
