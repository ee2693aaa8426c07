"""S3 uploads in proxy mode, as botocore sends them: its own S3 client, in its own process,
signs with the placeholder as its access key id; blindkey signs again with the real keys;
the upstream takes the upload only if S3 would (s3_oracle.py: botocore's signer, the
aws-chunked body, its checksum trailer, its chunk signatures). Each upload is larger than
the proxy's max_request_body, so one that was read whole would be refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import sys
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from blindkey.config.paths import Paths
from tests.proxy import s3_agent
from tests.proxy.conftest import Env
from tests.proxy.s3_oracle import STORE, Store, start_s3
from tests.proxy.sigv4_oracle import SESSION_KEYS, aws_proxy_mode
from tests.proxy.test_attack_dos import audit_records

SIZE = 1024 * 1024 + 5  # > max_request_body (64KiB), and not a whole number of chunks
# The agent's own timeouts are 10 s: one upload may take no longer than this, far below the
# per-test limit, so a proxy that hangs fails the test with its reason.
DEADLINE = 30.0


@dataclass
class S3:
    env: Env
    upstream: web.AppRunner
    port: int
    placeholder: str

    @property
    def store(self) -> Store:
        return self.upstream.app[STORE]

    async def upload(self, mode: str, size: int = SIZE) -> dict[str, Any]:
        proxy = f"http://agent:{self.env.token}@127.0.0.1:{self.env.server.port}"
        process = await asyncio.create_subprocess_exec(
            sys.executable, s3_agent.__file__, mode, proxy, f"https://127.0.0.1:{self.port}",
            str(self.env.paths.ca_cert), self.placeholder, str(size),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(process.communicate(), DEADLINE)
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"the {mode} upload did not finish in {DEADLINE} s")
        assert process.returncode == 0, out
        return dict(orjson.loads(out))


@pytest.fixture
async def s3(home: Paths, tmp_path: Path) -> AsyncIterator[S3]:
    async with aws_proxy_mode(home, tmp_path, start_s3) as (env, upstream, port, placeholder):
        yield S3(env, upstream, port, placeholder)


def _stored(s3: S3, key: str, size: int = SIZE) -> dict[str, str]:
    assert s3.store.objects[f"/bucket/{key}"] == s3_agent.content(size)
    headers = s3.store.headers[-1]
    assert f"Credential={SESSION_KEYS.access_key_id}/" in headers["authorization"]
    for wire in s3.store.wire_bodies:
        assert s3.placeholder.encode() not in wire
    records = [r for r in audit_records(s3.env.paths.audit_dir) if r.get("via") == "connect"]
    assert records[-1]["secrets"] == ["AWS"] and records[-1]["styles"] == ["sigv4"]
    assert records[-1]["status"] == 200
    return headers


async def test_put_object_with_a_checksum_trailer_streams_through(s3: S3) -> None:
    """botocore's default: aws-chunked, the CRC32 in a trailer, the payload signed as the
    literal STREAMING-UNSIGNED-PAYLOAD-TRAILER; the body goes on as it came."""
    assert await s3.upload("trailer") == {"status": 200}
    headers = _stored(s3, "trailer.bin")
    assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert headers["x-amz-trailer"] == "x-amz-checksum-crc32"
    assert headers["content-encoding"] == "aws-chunked"
    signed = headers["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-encoding", "x-amz-decoded-content-length", "x-amz-trailer"} <= set(signed)


async def test_a_text_upload_an_sdk_signed_streams_too(s3: S3) -> None:
    """A text Content-Type, which proxy mode reads whole to look for placeholders: an
    upload an SDK declared chunked (or unsigned) is the SDK's, and streams as it came."""
    assert await s3.upload("text") == {"status": 200}
    headers = _stored(s3, "text.bin")
    assert headers["content-type"] == "text/csv"


async def test_put_object_without_a_checksum_signs_the_sdks_payload_hash(s3: S3) -> None:
    """request_checksum_calculation="when_required": with no checksum header botocore hashes
    the body into X-Amz-Content-Sha256. That hash is signed as declared (S3 checks the body
    against it), so the body streams instead of being read whole to be hashed again."""
    assert await s3.upload("when-required") == {"status": 200}
    headers = _stored(s3, "when-required.bin")
    assert headers["x-amz-content-sha256"] == hashlib.sha256(s3_agent.content(SIZE)).hexdigest()
    assert headers["content-length"] == str(SIZE)


async def test_signed_chunks_are_signed_again_as_they_stream(s3: S3) -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD (the AWS SDKs for Java and JavaScript): every
    chunk's signature, made by the SDK with a key that is not AWS's, is replaced by one
    made with the real key and chained from blindkey's signature of the request."""
    assert await s3.upload("signed-chunks") == {"status": 200, "body": ""}
    headers = _stored(s3, "signed-chunks.bin")
    assert headers["x-amz-content-sha256"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    assert int(headers["content-length"]) == len(s3.store.wire_bodies[-1]) > SIZE


async def test_signed_chunks_with_a_trailer_are_refused_clearly(s3: S3) -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER (a signed trailer too) is not signed again:
    refused before anything leaves, recorded, with what to configure instead; no hang."""
    answer = await s3.upload("signed-chunks-trailer")
    error = orjson.loads(answer["body"])
    assert answer["status"] == 400 and error["error"] == "bad_request"
    assert "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" in error["message"]
    assert "trailing checksum" in error["message"]
    assert not s3.store.headers
    record = audit_records(s3.env.paths.audit_dir)[-1]
    assert record["reason"] == "bad_request" and record["status"] == 400
    assert "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" in record["detail"]


async def test_a_malformed_chunk_fails_the_upload_clearly(s3: S3) -> None:
    """A chunk that runs on past its size: the upload stops there (the upstream never gets
    a whole body to store), and the agent is told why; no hang."""
    answer = await s3.upload("bad-chunks")
    error = orjson.loads(answer["body"])
    assert answer["status"] == 400 and error["error"] == "bad_request", answer
    assert "does not end where its size says" in error["message"]
    assert not s3.store.objects
    record = audit_records(s3.env.paths.audit_dir)[-1]
    assert record["reason"] == "bad_request" and record["status"] == 400


def _aws_chunked(data: bytes, signed: bool) -> bytes:
    """An aws-chunked body as an agent on /proxy sends it: it holds no key, so its chunk
    signatures are anything (blindkey makes them); unsigned, with a CRC32 trailer."""
    chunks = [data[at : at + s3_agent.CHUNK] for at in range(0, len(data), s3_agent.CHUNK)]
    out = b""
    for chunk in [*chunks, b""]:
        extension = ";chunk-signature=" + "0" * 64 if signed else ""
        out += f"{len(chunk):x}{extension}\r\n".encode() + chunk + (b"\r\n" if chunk else b"")
    if signed:
        return out + b"\r\n"
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    return out + f"x-amz-checksum-crc32:{crc}\r\n\r\n".encode()


@pytest.mark.parametrize("declared", ["STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                                      "STREAMING-UNSIGNED-PAYLOAD-TRAILER"])  # fmt: skip
async def test_x_as_inject_sigv4_streams_chunked_uploads(s3: S3, declared: str) -> None:
    """The same on /proxy: X-AS-Inject-Sigv4 signs the headers, and signs the chunks when
    they are to be signed; the body (past max_request_body) streams."""
    data = s3_agent.content(SIZE)
    signed = declared.startswith("STREAMING-AWS4")
    headers = s3.env.to(
        f"https://127.0.0.1:{s3.port}/bucket/via-proxy.bin", **{
            "X-AS-Inject-Sigv4": "AWS", "X-AS-Sigv4-Service": "s3",
            "X-AS-Sigv4-Region": "eu-west-1", "X-Amz-Content-Sha256": declared,
            "Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": str(SIZE),
            **({} if signed else {"X-Amz-Trailer": "x-amz-checksum-crc32"}),
        },
    )  # fmt: skip
    call = s3.env.call("PUT", headers=headers, data=io.BytesIO(_aws_chunked(data, signed)))
    status, _, body = await asyncio.wait_for(call, DEADLINE)
    assert status == 200, body
    assert s3.store.objects["/bucket/via-proxy.bin"] == data
    assert s3.store.headers[-1]["x-amz-content-sha256"] == declared


async def test_a_body_a_value_was_put_into_is_hashed_as_sent(s3: S3) -> None:
    """A declared hash is trusted only for a body that streams as it came: one blindkey
    holds and changed (X-AS-Inject-Body-*) is hashed again, else S3 would refuse it."""
    sent = b'{"token": "", "n": 1}'
    headers = s3.env.to(
        f"https://127.0.0.1:{s3.port}/bucket/with-value.json", **{
            "X-AS-Inject-Sigv4": "AWS", "X-AS-Sigv4-Service": "s3",
            "X-AS-Sigv4-Region": "eu-west-1", "X-AS-Inject-Body-token": "GITHUB_TOKEN",
            "X-Amz-Content-Sha256": hashlib.sha256(sent).hexdigest(),
            "Content-Type": "application/json",
        },
    )  # fmt: skip
    status, _, body = await asyncio.wait_for(s3.env.call("PUT", headers=headers, data=sent), 20)
    assert status == 200, body
    stored = s3.store.objects["/bucket/with-value.json"]
    assert stored != sent and s3.store.headers[-1]["x-amz-content-sha256"] == (
        hashlib.sha256(stored).hexdigest()
    )
