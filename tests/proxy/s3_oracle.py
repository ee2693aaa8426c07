"""An upstream that takes S3 uploads as S3 would: the request's signature checked with
botocore's own signer and the real keys (sigv4_oracle.py), an aws-chunked body decoded, its
checksum trailer and its chunk signatures checked. A good upload is stored and answered 200
with an ETag; anything else is 403 with S3's XML error, so an SDK call fails loudly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import zlib
from dataclasses import dataclass, field

from aiohttp import web

from blindkey.broker.credentials.aws import AwsKeys
from tests.proxy.sigv4_oracle import botocore_authorization

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
SIGNED_CHUNKS = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


@dataclass
class Store:
    keys: AwsKeys
    objects: dict[str, bytes] = field(default_factory=dict)
    headers: list[dict[str, str]] = field(default_factory=list)
    wire_bodies: list[bytes] = field(default_factory=list)


STORE = web.AppKey("store", Store)


@dataclass
class Chunked:
    data: bytes
    trailers: dict[str, str]
    signatures: list[tuple[str, bytes]]  # (chunk-signature, chunk data), the last one empty


def decode_aws_chunked(body: bytes) -> Chunked:
    """`SIZE[;chunk-signature=SIG]\\r\\nDATA\\r\\n`... `0[;...]\\r\\n` then trailer lines."""
    data, signatures, at = b"", [], 0
    while True:
        end = body.index(b"\r\n", at)
        size_text, _, extension = body[at:end].decode("ascii").partition(";")
        size = int(size_text, 16)
        chunk = body[end + 2 : end + 2 + size]
        if extension:
            name, _, signature = extension.partition("=")
            assert name == "chunk-signature", extension
            signatures.append((signature, chunk))
        data += chunk
        at = end + 2 + size
        if size == 0:
            break
        assert body[at : at + 2] == b"\r\n", "a chunk does not end with CRLF"
        at += 2
    trailers: dict[str, str] = {}
    for line in body[at:].split(b"\r\n"):
        if line:
            name, _, value = line.decode("ascii").partition(":")
            trailers[name.strip().lower()] = value.strip()
    return Chunked(data, trailers, signatures)


def signing_key(keys: AwsKeys, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + keys.secret_access_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def chunk_signatures(
    keys: AwsKeys, when: str, scope: str, seed: str, chunks: list[bytes]
) -> list[str]:
    """Each chunk's signature, chained from the seed (the request's own signature), as the
    S3 documentation lays out STREAMING-AWS4-HMAC-SHA256-PAYLOAD."""
    date, region, service, _ = scope.split("/")
    key = signing_key(keys, date, region, service)
    previous, made = seed, []
    for chunk in chunks:
        text = "\n".join(
            ["AWS4-HMAC-SHA256-PAYLOAD", when, scope, previous, EMPTY_SHA256,
             hashlib.sha256(chunk).hexdigest()]
        )  # fmt: skip
        previous = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        made.append(previous)
    return made


def _problems(
    request: web.Request, headers: dict[str, str], body: bytes, keys: AwsKeys
) -> tuple[str, bytes]:
    """What S3 would refuse the upload for ("": nothing), and the object's content."""
    sent = headers.get("authorization", "")
    if sent != botocore_authorization(request.method, request.raw_path, headers, body, keys):
        return "SignatureDoesNotMatch", b""
    if headers.get("x-amz-security-token", "") != keys.session_token:
        return "InvalidToken", b""
    declared = headers.get("x-amz-content-sha256", "")
    if "aws-chunked" not in headers.get("content-encoding", ""):
        ok = declared in ("UNSIGNED-PAYLOAD", hashlib.sha256(body).hexdigest())
        return ("" if ok else "XAmzContentSHA256Mismatch"), body
    literal = declared == UNSIGNED_TRAILER or declared.startswith(SIGNED_CHUNKS)
    if not literal and declared != hashlib.sha256(body).hexdigest():
        return "XAmzContentSHA256Mismatch", b""
    decoded = decode_aws_chunked(body)
    if str(len(decoded.data)) != headers.get("x-amz-decoded-content-length"):
        return "IncompleteBody", b""
    trailer = headers.get("x-amz-trailer", "")
    if trailer:
        crc = base64.b64encode(zlib.crc32(decoded.data).to_bytes(4, "big")).decode()
        if trailer != "x-amz-checksum-crc32" or decoded.trailers.get(trailer) != crc:
            return "BadDigest", b""
    if declared.startswith(SIGNED_CHUNKS):
        scope = sent.split("Credential=", 1)[1].split(",", 1)[0].split("/", 1)[1]
        seed = sent.rsplit("Signature=", 1)[1]
        given = [signature for signature, _ in decoded.signatures]
        chunks = [chunk for _, chunk in decoded.signatures]
        if not given or given != chunk_signatures(keys, headers["x-amz-date"], scope, seed, chunks):
            return "SignatureDoesNotMatch", b""
    return "", decoded.data


async def upload(request: web.Request) -> web.Response:
    body = await request.read()
    headers = {k.lower(): v for k, v in request.headers.items()}
    store = request.app[STORE]
    store.headers.append(headers)
    store.wire_bodies.append(body)
    if request.method != "PUT":
        return web.Response(status=405)
    problem, content = _problems(request, headers, body, store.keys)
    if problem:
        error = f"<Error><Code>{problem}</Code><Message>{problem}</Message></Error>"
        return web.Response(status=403, text=error, content_type="application/xml")
    store.objects[request.path] = content
    etag = hashlib.md5(store.objects[request.path]).hexdigest()  # noqa: S324 (S3's ETag)
    return web.Response(status=200, headers={"ETag": f'"{etag}"'})


async def start_s3(keys: AwsKeys, context: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STORE] = Store(keys)
    app.router.add_route("*", "/{tail:.*}", upload)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    (address,) = runner.addresses
    return runner, int(address[1])
