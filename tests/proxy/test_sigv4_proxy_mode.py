"""Proxy mode: botocore signs with the placeholder as its access key id and sends through
blindkey as its HTTPS proxy; the TLS upstream checks the signature with botocore and the
real keys. The keys never go on the wire as they are, and never come back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpsession import URLLib3Session

from blindkey.config.paths import Paths
from tests.proxy.conftest import Env
from tests.proxy.sigv4_oracle import SEEN, SESSION_KEYS, aws_proxy_mode, start_oracle
from tests.proxy.test_attack_dos import audit_records

# What the program holds besides the placeholder: any secret key will do, it signs nothing
# that reaches AWS.
DUMMY_SECRET = "not-the-secret-key-held-by-blindkey"


@dataclass
class Mode:
    env: Env
    oracle: web.AppRunner
    port: int
    placeholder: str

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    async def send(self, request: AWSRequest) -> tuple[int, bytes]:
        """As an AWS SDK sends: botocore's own HTTP session, told only the proxy and the CA."""
        proxy = f"http://agent:{self.env.token}@127.0.0.1:{self.env.server.port}"
        session = URLLib3Session(verify=str(self.env.paths.ca_cert), proxies={"https": proxy})

        def send() -> tuple[int, bytes]:
            try:
                response = session.send(request.prepare())
                return response.status_code, response.content
            finally:
                session.close()

        return await asyncio.to_thread(send)


@pytest.fixture
async def mode(home: Paths, tmp_path: Path) -> AsyncIterator[Mode]:
    async with aws_proxy_mode(home, tmp_path, start_oracle) as (env, upstream, port, placeholder):
        yield Mode(env, upstream, port, placeholder)


def _signed_by_sdk(mode: Mode, request: AWSRequest, service: str) -> AWSRequest:
    credentials = Credentials(mode.placeholder, DUMMY_SECRET)
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    signer(credentials, service, "eu-west-1").add_auth(request)
    return request


def _checked(mode: Mode, status: int, body: bytes) -> dict[str, Any]:
    assert status == 200, body
    for part in (SESSION_KEYS.access_key_id, SESSION_KEYS.secret_access_key):
        assert part.encode() not in body
    answer = orjson.loads(body)
    assert answer["signature_ok"] and answer["payload_ok"] and answer["token_ok"], answer
    assert answer["echo"][1] == "[REDACTED:AWS.secret_access_key]"
    return dict(answer)


async def test_a_request_signed_with_the_placeholder_is_signed_again(mode: Mode) -> None:
    body = b'{"TableName": "widgets"}'
    request = AWSRequest(
        "POST", mode.url("/prod/items?b=2&a=%20x&a=~"), data=body,
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "Do.It"},
    )  # fmt: skip
    status, answer = await mode.send(_signed_by_sdk(mode, request, "execute-api"))
    _checked(mode, status, answer)
    _, _, headers, received = mode.oracle.app[SEEN][-1]
    assert received == body
    authorization = headers["authorization"]
    assert f"Credential={SESSION_KEYS.access_key_id}/" in authorization
    assert "/eu-west-1/execute-api/aws4_request" in authorization
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-type", "host", "x-amz-date", "x-amz-target"} <= set(signed)
    assert "x-amz-security-token" in signed
    records = [r for r in audit_records(mode.env.paths.audit_dir) if r.get("via") == "connect"]
    assert records[-1]["secrets"] == ["AWS"] and records[-1]["styles"] == ["sigv4"]


async def test_s3_put_with_a_hashed_body(mode: Mode) -> None:
    request = AWSRequest("PUT", mode.url("/bucket/a%20key.txt"), data=b"hello " * 100,
                         headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    status, answer = await mode.send(_signed_by_sdk(mode, request, "s3"))
    _checked(mode, status, answer)
    _, path, headers, _ = mode.oracle.app[SEEN][-1]
    assert path == "/bucket/a%20key.txt"
    assert headers["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"


async def test_the_keys_are_never_swapped_in(mode: Mode) -> None:
    """Elsewhere in a re-signed request the placeholder stays a placeholder; without an SDK
    signature, an aws placeholder is refused rather than replaced by the keys."""
    request = AWSRequest("GET", mode.url(f"/prod/x?echo={mode.placeholder}"))
    status, answer = await mode.send(_signed_by_sdk(mode, request, "execute-api"))
    _checked(mode, status, answer)
    _, path, _, _ = mode.oracle.app[SEEN][-1]
    assert path == f"/prod/x?echo={mode.placeholder}"
    seen = len(mode.oracle.app[SEEN])
    bare = AWSRequest("GET", mode.url("/prod/x"),
                      headers={"Authorization": f"Bearer {mode.placeholder}"})  # fmt: skip
    status, body = await mode.send(bare)
    assert status == 400 and b"holds AWS keys" in body
    assert len(mode.oracle.app[SEEN]) == seen
