"""Signed chunks (`X-Amz-Content-Sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD`), as the AWS
SDKs for Java and JavaScript upload to S3: an aws-chunked body whose every chunk carries a
signature chained from the request's own. In proxy mode the SDK signed them with a key it
does not have; each is signed again here, with the real key, chained from blindkey's
signature of the request, while the body streams.

`SIZE;chunk-signature=SIG\\r\\nDATA\\r\\n` ... `0;chunk-signature=SIG\\r\\n\\r\\n`: a new
signature is as long as the old one, so the body keeps its length and Content-Length holds.
A chunk is held whole while it is signed (its hash goes in front of it), so a chunk may not
be larger than MAX_CHUNK; the body as a whole is never held.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from aiohttp import web

from blindkey.broker.credentials.aws import AwsKeys
from blindkey.broker.credentials.sigv4_sign import (
    Scope,
    chunk_signature,
    credential_scope,
    signing_key,
)
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.inject import CountingBody
from blindkey.proxy.request.token_scan import TokenScan

SIGNED_CHUNKS = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
MAX_CHUNK = 16 * 1024 * 1024  # the SDKs send 64 KiB to 8 MiB
_HEAD_LIMIT = 128  # "SIZE;chunk-signature=" and 64 hex digits, with room to spare
_HEAD = re.compile(rb"^([0-9a-fA-F]{1,8});chunk-signature=[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class ChunkSigner:
    key: bytes
    when: str
    scope: str
    seed: str  # the request's signature: the first chunk's is chained from it

    @classmethod
    def of(cls, keys: AwsKeys, scope: Scope, when: str, authorization: str) -> ChunkSigner:
        seed = authorization.rsplit("Signature=", 1)[1]
        return cls(signing_key(keys, scope, when), when, credential_scope(scope, when), seed)


def _malformed(what: str) -> ProxyError:
    return ProxyError(
        "bad_request",
        f"{SIGNED_CHUNKS} body: {what}; blindkey signs each chunk again and needs "
        "`SIZE;chunk-signature=SIGNATURE` lines of chunks up to "
        f"{MAX_CHUNK // (1024 * 1024)} MiB",
    )


class Resigner:
    """Takes the agent's body in pieces of any size, gives it back with new signatures."""

    def __init__(self, signer: ChunkSigner) -> None:
        self.signer = signer
        self.previous = signer.seed
        self.pending = bytearray()
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.pending += data
        out: list[bytes] = []
        while not self.done:
            piece = self._next()
            if piece is None:
                break
            out.append(piece)
        if self.done and self.pending:
            raise _malformed("bytes after the last (empty) chunk")
        return b"".join(out)

    def _next(self) -> bytes | None:
        end = self.pending.find(b"\r\n", 0, _HEAD_LIMIT)
        if end < 0:
            if len(self.pending) >= _HEAD_LIMIT:
                raise _malformed("a chunk's line is malformed")
            return None
        found = _HEAD.match(bytes(self.pending[:end]))
        if found is None:
            raise _malformed("a chunk's line is malformed")
        size = int(found[1], 16)
        if size > MAX_CHUNK:
            raise _malformed(f"a chunk of {size} bytes")
        whole = end + 2 + size + 2
        if len(self.pending) < whole:
            return None
        chunk = bytes(self.pending[end + 2 : end + 2 + size])
        if self.pending[whole - 2 : whole] != b"\r\n":
            raise _malformed("a chunk does not end where its size says")
        del self.pending[:whole]
        signer = self.signer
        self.previous = chunk_signature(signer.key, signer.when, signer.scope, self.previous, chunk)
        self.done = size == 0
        head = found[1] + b";chunk-signature=" + self.previous.encode("ascii")
        return head + b"\r\n" + chunk + b"\r\n"

    def finish(self) -> None:
        if not self.done:
            raise _malformed("it ended before its last (empty) chunk")


def resigned_bytes(body: bytes, signer: ChunkSigner) -> bytes:
    resigner = Resigner(signer)
    out = resigner.feed(body)
    resigner.finish()
    return out


class ResignedBody(CountingBody):
    """The agent's body streamed on with each chunk signed again (counted as it came)."""

    def __init__(
        self, request: web.BaseRequest, scan: TokenScan | None, signer: ChunkSigner
    ) -> None:
        super().__init__(request, scan)
        self.signer = signer

    async def _read(self) -> AsyncIterator[bytes]:
        resigner = Resigner(self.signer)
        async for data in super()._read():
            out = resigner.feed(data)
            if out:
                yield out
        resigner.finish()


def resigned(
    body: bytes | CountingBody | None, signers: Iterable[ChunkSigner]
) -> bytes | CountingBody | None:
    """The body with its chunks signed again, when a signature of the call signs chunks."""
    for signer in signers:
        if isinstance(body, CountingBody):
            return ResignedBody(body.request, body.scan, signer)
        if body is None:
            raise _malformed("there is no body")
        return resigned_bytes(body, signer)
    return body
