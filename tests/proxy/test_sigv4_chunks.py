"""The chunk re-signer alone: whatever pieces the agent's body arrives in, the same chunks
come out, with the signatures S3 expects (the oracle's own chain, s3_oracle.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.sigv4 import Scope
from blindkey.proxy.request.sigv4_chunks import ChunkSigner, Resigner, resigned_bytes
from tests.proxy.s3_oracle import chunk_signatures, decode_aws_chunked
from tests.proxy.sigv4_oracle import KEYS

WHEN = "20261207T120000Z"
SEED = "f" * 64
SIGNER = ChunkSigner.of(KEYS, Scope("eu-west-1", "s3"), WHEN, f"... Signature={SEED}")


def _body(chunks: list[bytes]) -> bytes:
    out = b""
    for chunk in [*chunks, b""]:
        out += f"{len(chunk):x};chunk-signature={'0' * 64}\r\n".encode() + chunk + b"\r\n"
    return out


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=5),
    st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=40),
)
def test_any_split_gives_the_chain_s3_expects(chunks: list[bytes], cuts: list[int]) -> None:
    body = _body(chunks)
    resigner, out, at = Resigner(SIGNER), b"", 0
    for cut in cuts * (len(body) // sum(cuts) + 1):
        out += resigner.feed(body[at : at + cut])
        at += cut
    resigner.finish()
    assert len(out) == len(body)
    decoded = decode_aws_chunked(out)
    scope = f"{WHEN[:8]}/eu-west-1/s3/aws4_request"
    expected = chunk_signatures(KEYS, WHEN, scope, SEED, [*chunks, b""])
    assert [signature for signature, _ in decoded.signatures] == expected
    assert decoded.data == b"".join(chunks)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (_body([b"abc"])[:-9], "ended before its last"),
        (_body([b"abc"]) + b"more", "bytes after the last"),
        (b"3;chunk-signature=" + b"0" * 63 + b"\r\nabc\r\n", "line is malformed"),
        (b"z" * 200, "line is malformed"),
        (b"2000000;chunk-signature=" + b"0" * 64 + b"\r\n", "a chunk of 33554432 bytes"),
    ],
)
def test_a_malformed_body_is_refused(body: bytes, said: str) -> None:
    with pytest.raises(ProxyError, match=said):
        resigned_bytes(body, SIGNER)
