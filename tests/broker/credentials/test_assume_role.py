"""`aws` secrets with a role: the broker asks a local STS (aiohttp on port 0, answering
AssumeRole in AWS's XML) for the role's temporary keys, signing the call with the stored
keys; the STS checks that signature with botocore's signer as the oracle. The proxy is given
the temporary keys with their session token (never the stored ones), kept until a minute
before they expire, then renewed; a refusal is a clear error."""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from blindkey.broker.credentials.aws import AwsKeys, parse_keys
from blindkey.broker.protocol import BrokerDenied
from blindkey.config.paths import Paths
from tests.broker.conftest import Brokers
from tests.broker.credentials.helpers import Clock, configure, everything_written, resolve, store
from tests.broker.credentials.test_oauth2 import started
from tests.proxy.sigv4_oracle import KEYS, SESSION_KEYS, botocore_authorization

ARN = "arn:aws:iam::123456789012:role/agent-reader"
XMLNS = "https://sts.amazonaws.com/doc/2011-06-15/"


def _temporary(number: int) -> AwsKeys:
    letters = string.ascii_letters + string.digits
    return AwsKeys(
        f"ASIA{number:016d}",
        "".join(secrets.choice(letters) for _ in range(40)),
        "IQoJb3JpZ2luX2VjE" + secrets.token_urlsafe(96),
    )


def _error(status: int, code: str) -> web.Response:
    error = f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{code}</Message></Error>"
    text = f'<ErrorResponse xmlns="{XMLNS}">{error}<RequestId>1</RequestId></ErrorResponse>'
    return web.Response(status=status, text=text, content_type="text/xml")


@dataclass
class Sts:
    """A local STS that judges each AssumeRole's signature with botocore and the stored keys."""

    url: str = ""
    stored: AwsKeys = KEYS
    fault: str = ""  # "denied", "garbage", "empty" (XML without credentials)
    calls: list[tuple[bool, dict[str, str], dict[str, str]]] = field(default_factory=list)
    issued: list[AwsKeys] = field(default_factory=list)
    to_issue: list[AwsKeys] = field(default_factory=list)  # before random ones

    async def assume_role(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        expected = botocore_authorization("POST", request.raw_path, headers, body, self.stored)
        signed = headers.get("authorization") == expected
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        self.calls.append((signed, form, headers))
        if not signed:
            return _error(403, "SignatureDoesNotMatch")
        if self.fault == "denied":
            return _error(403, "AccessDenied")
        if self.fault == "empty":
            return web.Response(text="<html>surprise</html>", content_type="text/html")
        if self.fault == "garbage":
            return web.json_response({"surprise": "not XML"})
        keys = self.to_issue.pop(0) if self.to_issue else _temporary(len(self.issued))
        self.issued.append(keys)
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = (
            f'<AssumeRoleResponse xmlns="{XMLNS}"><AssumeRoleResult><Credentials>'
            f"<AccessKeyId>{keys.access_key_id}</AccessKeyId>"
            f"<SecretAccessKey>{keys.secret_access_key}</SecretAccessKey>"
            f"<SessionToken>{keys.session_token}</SessionToken>"
            f"<Expiration>{expires}</Expiration></Credentials>"
            f"<AssumedRoleUser><Arn>{ARN}/s</Arn></AssumedRoleUser></AssumeRoleResult>"
            "</AssumeRoleResponse>"
        )
        return web.Response(text=text, content_type="text/xml")


@pytest.fixture
async def sts() -> AsyncIterator[Sts]:
    server = Sts()
    app = web.Application()
    app.router.add_post("/", server.assume_role)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        yield server
    finally:
        await runner.cleanup()


def with_role(url: str) -> str:
    return (f'\n[secrets.AWS]\nkind = "aws"\nrole_arn = "{ARN}"\nsts_url = "{url}"\n'
            'region = "eu-west-1"\n')  # fmt: skip


async def test_the_role_s_keys_are_minted_kept_and_renewed(
    home: Paths, brokers: Brokers, sts: Sts
) -> None:
    clock = Clock()
    agent = configure(home, with_role(sts.url), [sts.url.rstrip("/")])
    store(home, AWS=KEYS.to_value())
    server = await started(brokers, home, clock)
    client = brokers.client(server)
    first = parse_keys((await resolve(client, agent, "AWS"))["values"]["AWS"])
    assert first == sts.issued[0] and first.session_token  # the proxy signs with these
    (signed, form, headers), = sts.calls  # fmt: skip
    assert signed, "botocore does not find the AssumeRole signature"
    assert form == {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": ARN,
                    "RoleSessionName": "blindkey-AWS", "DurationSeconds": "3600"}  # fmt: skip
    assert "/eu-west-1/sts/aws4_request" in headers["authorization"]
    assert headers["authorization"].split("Credential=")[1].startswith(KEYS.access_key_id)
    # Kept: the next call asks STS nothing.
    assert parse_keys((await resolve(client, agent, "AWS"))["values"]["AWS"]) == first
    clock.now += 3600 - 61
    assert not server.state.expire()
    clock.now += 2
    assert server.state.expire()  # a minute before STS's expiry: renewed
    second = parse_keys((await resolve(client, agent, "AWS"))["values"]["AWS"])
    assert second == sts.issued[1] != first and len(sts.calls) == 2
    # What the proxy may redact holds the temporary keys, never the stored ones.
    redacted = server.state.redaction_set()
    assert redacted["AWS.session_token"] == second.session_token
    assert KEYS.secret_access_key not in redacted.values()
    assert KEYS.secret_access_key.encode() not in everything_written(home)


async def test_stored_keys_with_a_session_token_sign_it_too(
    home: Paths, brokers: Brokers, sts: Sts
) -> None:
    sts.stored = SESSION_KEYS
    agent = configure(home, with_role(sts.url), [sts.url.rstrip("/")])
    store(home, AWS=SESSION_KEYS.to_value())
    server = await started(brokers, home)
    await resolve(brokers.client(server), agent, "AWS")
    (signed, _, headers), = sts.calls  # fmt: skip
    assert signed and headers["x-amz-security-token"] == SESSION_KEYS.session_token


@pytest.mark.parametrize(
    ("fault", "message"),
    [("denied", "STS 127.0.0.1 of AWS answered 403 AccessDenied"),
     ("garbage", "STS 127.0.0.1 of AWS answered 200 with no XML"),
     ("empty", "STS answered AWS with no usable credentials")],
)  # fmt: skip
async def test_a_refusal_is_a_clear_error(
    home: Paths, brokers: Brokers, sts: Sts, fault: str, message: str
) -> None:
    sts.fault = fault
    agent = configure(home, with_role(sts.url), [sts.url.rstrip("/")])
    store(home, AWS=KEYS.to_value())
    server = await started(brokers, home)
    with pytest.raises(BrokerDenied) as refused:
        await resolve(brokers.client(server), agent, "AWS")
    assert refused.value.code == "upstream_error" and message in str(refused.value)
    assert KEYS.secret_access_key not in str(refused.value)


async def test_sts_off_the_allowlist_is_not_called(home: Paths, brokers: Brokers, sts: Sts) -> None:
    agent = configure(home, with_role(sts.url), [])
    store(home, AWS=KEYS.to_value())
    server = await started(brokers, home)
    with pytest.raises(BrokerDenied) as refused:
        await resolve(brokers.client(server), agent, "AWS")
    assert refused.value.code == "host_not_allowed" and not sts.calls
