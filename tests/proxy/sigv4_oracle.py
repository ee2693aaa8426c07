"""An upstream that checks SigV4 signatures as AWS would, with botocore's own signer as the
judge: it signs again what it received, with the real keys, and compares."""

from __future__ import annotations

import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import trustme
from aiohttp import web
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from blindkey.broker.credentials.aws import AwsKeys
from blindkey.broker.vault import FileVault
from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from blindkey.proxy.tls.ca import ensure_ca
from tests.proxy.conftest import Env, open_env

KEYS = AwsKeys("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
SESSION_KEYS = AwsKeys(
    "ASIAQXZ3EXAMPLEKEYID", "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY", "FwoGZXIvYXdzEXAMPLE" * 4
)
ORACLE_KEYS = web.AppKey("oracle_keys", AwsKeys)
SEEN = web.AppKey("seen", list)


def botocore_authorization(
    method: str, raw_path: str, headers: dict[str, str], body: bytes, keys: AwsKeys
) -> str:
    """The Authorization botocore makes for this request, over the headers it says it signs
    and at the time it says it was signed."""
    sent = headers["authorization"]
    credential = sent.split("Credential=", 1)[1].split(",", 1)[0]
    _, _, region, service, _ = credential.split("/")
    signed = sent.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
    path, _, query = raw_path.partition("?")
    params = [
        (unquote(k), unquote(v)) for k, _, v in (p.partition("=") for p in query.split("&") if p)
    ]
    request = AWSRequest(
        method=method,
        url=f"http://{headers['host']}{path}",
        headers={name: headers[name] for name in signed},
        data=body,
        params=params,
    )
    request.context["timestamp"] = headers["x-amz-date"]
    credentials = Credentials(
        keys.access_key_id, keys.secret_access_key, keys.session_token or None
    )
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(credentials, service, region)
    canonical = signer.canonical_request(request)
    proof = signer.signature(signer.string_to_sign(request, canonical), request)
    signer._inject_signature_to_request(request, proof)
    return str(request.headers["Authorization"])


async def verify(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {k.lower(): v for k, v in request.headers.items()}
    keys = request.app[ORACLE_KEYS]
    request.app[SEEN].append((request.method, request.raw_path, headers, body))
    declared = headers.get("x-amz-content-sha256", "")
    expected = botocore_authorization(request.method, request.raw_path, headers, body, keys)
    answer: dict[str, Any] = {
        "signature_ok": headers.get("authorization") == expected,
        "payload_ok": declared in ("UNSIGNED-PAYLOAD", hashlib.sha256(body).hexdigest()),
        "token_ok": headers.get("x-amz-security-token", "") == keys.session_token,
        # A careless API echoing what it was given: the agent must not read it back.
        "echo": [keys.access_key_id, keys.secret_access_key, keys.session_token],
    }
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def start_oracle(
    keys: AwsKeys, context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app[ORACLE_KEYS] = keys
    app[SEEN] = []
    app.router.add_route("*", "/{tail:.*}", verify)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    (address,) = runner.addresses
    return runner, int(address[1])


Start = Callable[[AwsKeys, ssl.SSLContext], Awaitable[tuple[web.AppRunner, int]]]


@contextlib.asynccontextmanager
async def aws_proxy_mode(
    home: Paths, tmp_path: Path, start: Start
) -> AsyncIterator[tuple[Env, web.AppRunner, int, str]]:
    """A proxy holding SESSION_KEYS as secret AWS, bound to an HTTPS upstream made by
    `start` (trusted through [proxy] ca_file); yields it with the upstream, its port and
    the placeholder an SDK signs with."""
    ca = trustme.CA()
    upstream_ca = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(upstream_ca))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    upstream, port = await start(SESSION_KEYS, context)
    ensure_ca(home)
    FileVault(home).set("development", "AWS", SESSION_KEYS.to_value())

    def configure(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"].append(f"https://127.0.0.1:{port}")
        toml_table(document, "proxy")["ca_file"] = str(upstream_ca)
        section = toml_table(document, "secrets", "AWS")
        section["kind"] = "aws"
        section["hosts"] = string_array([f"https://127.0.0.1:{port}"])

    try:
        async with open_env(home, configure) as env:
            reply = await env.server.runtime.authoriser.broker.call(
                "placeholders", env="development"
            )
            yield env, upstream, port, str(reply["placeholders"]["AWS"])
    finally:
        await upstream.cleanup()
