"""X-AS-Inject-Sigv4 through the real proxy and broker: an upstream that re-signs each
request with botocore and the real keys finds the same signature (GET, PUT with a body,
odd query strings, a path that needs encoding, a session token, S3's unsigned payload),
and the keys never reach the agent: not in the answer, not in a record or log."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpsession import URLLib3Session

from blindkey.broker.credentials.aws import AwsKeys
from blindkey.broker.vault import FileVault
from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from blindkey.proxy.request.sigv4 import Scope, authorization
from tests.proxy.conftest import Env, open_env
from tests.proxy.sigv4_oracle import KEYS, SEEN, SESSION_KEYS, botocore_authorization, start_oracle
from tests.proxy.test_attack_dos import audit_records


@dataclass
class Signed:
    env: Env
    oracle: web.AppRunner
    port: int
    keys: AwsKeys

    def headers(self, path: str, *, service: str = "execute-api", **extra: str) -> dict[str, str]:
        return self.env.to(
            f"http://127.0.0.1:{self.port}{path}",
            **{"X-AS-Inject-Sigv4": "AWS", "X-AS-Sigv4-Region": "eu-west-1",
               "X-AS-Sigv4-Service": service}, **extra,
        )  # fmt: skip

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        headers = kwargs.pop("headers", None) or self.headers(path)
        status, _, body = await self.env.call(method, headers=headers, **kwargs)
        for secret in (self.keys.access_key_id, self.keys.secret_access_key):
            assert secret.encode() not in body
        if self.keys.session_token:
            assert self.keys.session_token.encode() not in body
        answer = orjson.loads(body)
        assert isinstance(answer, dict)
        return status, answer


async def _signed(home: Paths, keys: AwsKeys) -> AsyncIterator[Signed]:
    oracle, port = await start_oracle(keys)
    FileVault(home).set("development", "AWS", keys.to_value())

    def configure(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].append(f"http://127.0.0.1:{port}")
        section = toml_table(document, "secrets", "AWS")
        section["kind"] = "aws"
        section["hosts"] = string_array([f"http://127.0.0.1:{port}"])
        route = toml_table(document, "routes", "aws")
        route.update({"to": f"http://127.0.0.1:{port}/prod", "inject": "sigv4", "secret": "AWS"})

    try:
        async with open_env(home, configure) as env:
            yield Signed(env, oracle, port, keys)
    finally:
        await oracle.cleanup()


@pytest.fixture
async def signed(home: Paths) -> AsyncIterator[Signed]:
    async for found in _signed(home, KEYS):
        yield found


@pytest.fixture
async def with_token(home: Paths) -> AsyncIterator[Signed]:
    async for found in _signed(home, SESSION_KEYS):
        yield found


def _verified(answer: dict[str, Any]) -> None:
    assert answer["signature_ok"] and answer["payload_ok"] and answer["token_ok"], answer


async def test_get_is_signed_as_botocore_signs(signed: Signed) -> None:
    status, answer = await signed.call("GET", "/prod/items")
    assert status == 200
    _verified(answer)
    # The upstream echoed every key; the agent reads only their names.
    assert answer["echo"][:2] == [
        "[REDACTED:AWS.access_key_id]",
        "[REDACTED:AWS.secret_access_key]",
    ]
    _, _, headers, _ = signed.oracle.app[SEEN][-1]
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEYS.access_key_id}/")
    assert "/eu-west-1/execute-api/aws4_request" in headers["authorization"]
    assert "x-amz-security-token" not in headers


async def test_put_with_a_body(signed: Signed) -> None:
    body = b'{"name": "widget", "count": 3}'
    headers = signed.headers("/prod/items/7", **{"Content-Type": "application/json"})
    status, answer = await signed.call("PUT", "/prod/items/7", headers=headers, data=body)
    assert status == 200
    _verified(answer)
    _, _, seen, received = signed.oracle.app[SEEN][-1]
    assert received == body
    assert "content-type" in seen["authorization"].split("SignedHeaders=")[1]


@pytest.mark.parametrize(
    "query",
    [
        "q=two%20words&tilde=~x&slash=a%2Fb",
        "b=2&a=1&a=0&empty=&flag",
        "star=%2A&plus=%2B&pct=%25&unicode=%C3%A9t%C3%A9&Zcase=1&acase=2",
        "tilde=%7Ex&raw=a/b",
    ],
)
async def test_odd_query_strings(signed: Signed, query: str) -> None:
    path = f"/prod/search?{query}"
    status, answer = await signed.call("GET", path, headers=signed.headers(path))
    assert status == 200
    _verified(answer)


@pytest.mark.parametrize("service", ["execute-api", "s3"])
async def test_a_path_that_needs_encoding(signed: Signed, service: str) -> None:
    # Not S3: the path is normalised and encoded again; S3: signed as sent.
    path = "/prod/a%20b/%2Fslash/caf%C3%A9/./x/../~tilde/$dollar"
    status, answer = await signed.call("GET", path, headers=signed.headers(path, service=service))
    assert status == 200
    _verified(answer)


async def test_a_session_token_is_sent_and_signed(with_token: Signed) -> None:
    status, answer = await with_token.call("POST", "/prod/items", data=b"a=1")
    assert status == 200
    _verified(answer)
    _, _, headers, _ = with_token.oracle.app[SEEN][-1]
    assert headers["x-amz-security-token"] == SESSION_KEYS.session_token
    assert "x-amz-security-token" in headers["authorization"].split("SignedHeaders=")[1]
    assert answer["echo"][2] == "[REDACTED:AWS.session_token]"


async def test_unsigned_payload_streams(signed: Signed) -> None:
    headers = signed.headers("/bucket/key.bin", service="s3",
                             **{"X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD"})  # fmt: skip
    body = bytes(range(256)) * 1024  # past max_request_body (64 KiB): it is not buffered
    status, answer = await signed.call("PUT", "/bucket/key.bin", headers=headers, data=body)
    assert status == 200
    _verified(answer)
    _, _, seen, received = signed.oracle.app[SEEN][-1]
    assert seen["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD" and received == body


async def test_a_hashed_body_is_bounded(signed: Signed) -> None:
    status, _, body = await signed.env.call(
        "PUT", headers=signed.headers("/bucket/big", service="s3"), data=b"x" * (65 * 1024)
    )
    assert status == 413 and orjson.loads(body)["error"] == "body_too_large"
    assert not signed.oracle.app[SEEN]


async def test_streaming_chunked_is_refused_clearly(signed: Signed) -> None:
    headers = signed.headers("/bucket/key", service="s3", **{
        "X-Amz-Content-Sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"})  # fmt: skip
    status, _, body = await signed.env.call("PUT", headers=headers, data=b"5;chunk-signature=0")
    error = orjson.loads(body)
    assert status == 400 and error["error"] == "bad_request"
    assert "streaming-chunked" in error["message"] and "UNSIGNED-PAYLOAD" in error["message"]
    assert not signed.oracle.app[SEEN]


async def test_aws_keys_are_never_sent_as_a_value(signed: Signed) -> None:
    """Bearer, Header-*, Query-*: each would put the keys' JSON on the wire."""
    for style in ("X-AS-Inject-Bearer", "X-AS-Inject-Header-X-Key", "X-AS-Inject-Query-k"):
        headers = signed.env.to(f"http://127.0.0.1:{signed.port}/x", **{style: "AWS"})
        status, _, body = await signed.env.call("GET", headers=headers)
        assert status == 400 and b"holds AWS keys" in body, body
    assert not signed.oracle.app[SEEN]


async def test_sigv4_with_a_plain_value_is_refused(signed: Signed) -> None:
    headers = signed.env.to(
        f"http://127.0.0.1:{signed.port}/x",
        **{"X-AS-Inject-Sigv4": "GITHUB_TOKEN", "X-AS-Sigv4-Service": "s3"},
    )
    status, _, body = await signed.env.call("GET", headers=headers)
    assert status == 400 and b"not an aws secret" in body


async def test_no_service_is_said_plainly(signed: Signed) -> None:
    headers = signed.env.to(f"http://127.0.0.1:{signed.port}/x", X_AS_Inject_Sigv4="AWS")
    status, _, body = await signed.env.call("GET", headers=headers)
    assert status == 400 and b"X-AS-Sigv4-Service" in body


async def test_keys_reach_no_record_and_no_log(
    with_token: Signed, home: Paths, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await with_token.call("GET", "/prod/items?x=1")
    await with_token.call("GET", "/x", headers=with_token.headers("/x", service="bad service"))
    await with_token.env.server.stop()  # every record written
    parts = [SESSION_KEYS.access_key_id, SESSION_KEYS.secret_access_key, SESSION_KEYS.session_token]
    assert audit_records(home.audit_dir)
    assert files_holding(Path(home.state_dir), parts) == []
    assert not [r for r in caplog.records if any(p in r.getMessage() for p in parts)]


def files_holding(root: Path, parts: list[str]) -> list[str]:
    return [
        str(file)
        for file in root.rglob("*")
        if file.is_file() and any(p.encode() in file.read_bytes() for p in parts)
    ]


def test_the_oracle_tells_a_wrong_key() -> None:
    """The judge is not lenient: the same request signed with other keys is refused."""
    lookup = {"host": ["example.com"], "x-amz-date": ["20261207T120000Z"]}
    request = ("GET", "/a?b=c", hashlib.sha256(b"").hexdigest())
    scope = Scope("eu-west-1", "execute-api")
    headers = {name: values[0] for name, values in lookup.items()}
    headers["x-amz-content-sha256"] = request[2]
    for keys, right in ((KEYS, True), (SESSION_KEYS, False)):
        made = authorization(keys, scope, request, lambda n: lookup.get(n, []), list(lookup),
                             "20261207T120000Z")  # fmt: skip
        headers["authorization"] = made
        assert (botocore_authorization("GET", "/a?b=c", headers, b"", KEYS) == made) is right


async def test_an_sdk_on_a_route_signs_with_the_agent_token(signed: Signed) -> None:
    """`endpoint_url=http://127.0.0.1:8765/r/aws` and the agent token as access key id: the
    route signs with the real keys, for the region and service the SDK signed for."""
    base = f"http://127.0.0.1:{signed.env.server.port}/r/aws"
    request = AWSRequest("PUT", f"{base}/items/7?a=1&b=%20", data=b'{"n": 1}',
                         headers={"Content-Type": "application/json"})  # fmt: skip
    credentials = Credentials(signed.env.token, "any-secret-key-the-sdk-wants")
    SigV4Auth(credentials, "execute-api", "ap-south-1").add_auth(request)

    def send() -> tuple[int, bytes]:
        session = URLLib3Session()
        try:
            response = session.send(request.prepare())
            return response.status_code, response.content
        finally:
            session.close()

    status, body = await asyncio.to_thread(send)
    assert status == 200, body
    assert KEYS.secret_access_key.encode() not in body
    _verified(orjson.loads(body))
    method, path, headers, _ = signed.oracle.app[SEEN][-1]
    assert (method, path) == ("PUT", "/prod/items/7?a=1&b=%20")
    assert "/ap-south-1/execute-api/aws4_request" in headers["authorization"]
    assert signed.env.token not in str(headers)
