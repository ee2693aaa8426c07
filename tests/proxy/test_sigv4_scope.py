"""Which region and service a host signs for, and what an SDK's Authorization says: pure
functions, table-driven with the shapes AWS endpoints take."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.sigv4 import (
    Scope,
    canonical_query,
    parse_sdk_authorization,
    payload_rule,
    scope_from_host,
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("dynamodb.eu-west-1.amazonaws.com", ("dynamodb", "eu-west-1")),
        ("s3.amazonaws.com", ("s3", "")),
        ("my-bucket.s3.amazonaws.com", ("s3", "")),
        ("my.dotted.bucket.s3.us-west-2.amazonaws.com", ("s3", "us-west-2")),
        ("s3.dualstack.ap-southeast-2.amazonaws.com", ("s3", "ap-southeast-2")),
        ("bucket.s3.dualstack.eu-central-1.amazonaws.com", ("s3", "eu-central-1")),
        ("s3-eu-west-1.amazonaws.com", ("s3", "eu-west-1")),
        ("iam.amazonaws.com", ("iam", "")),
        ("sts.us-gov-west-1.amazonaws.com", ("sts", "us-gov-west-1")),
        ("ec2.cn-north-1.amazonaws.com.cn", ("ec2", "cn-north-1")),
        ("abc123.execute-api.us-east-1.amazonaws.com", ("execute-api", "us-east-1")),
        ("amazonaws.com", ("", "")),
        ("example.com", ("", "")),
        ("s3.amazonaws.com.evil.example", ("", "")),
        ("minio.local", ("", "")),
    ],
)
def test_scope_from_host(host: str, expected: tuple[str, str]) -> None:
    assert scope_from_host(host) == expected


def test_an_sdk_authorization_is_read() -> None:
    found = parse_sdk_authorization(
        "AWS4-HMAC-SHA256 Credential=bk_ABC/20261207/eu-west-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=" + "0a" * 32
    )
    assert found is not None and found.key_id == "bk_ABC"
    assert found.scope == Scope("eu-west-1", "s3")
    assert found.signed == ("host", "x-amz-content-sha256", "x-amz-date")
    assert parse_sdk_authorization("Bearer bk_ABC") is None
    assert parse_sdk_authorization("AWS4-HMAC-SHA256 Credential=bk_ABC/x") is None


def test_payload_rules() -> None:
    assert payload_rule(None) is None
    assert payload_rule("UNSIGNED-PAYLOAD") == "UNSIGNED-PAYLOAD"
    declared = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
    assert payload_rule(declared) == declared.lower()  # an SDK's hash: signed as declared
    assert payload_rule("e3b0c442") is None
    trailer = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert payload_rule(trailer) == trailer
    signed_chunks = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    assert payload_rule(signed_chunks) == signed_chunks  # signed again (sigv4_chunks.py)
    for streaming in (
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
    ):
        with pytest.raises(ProxyError, match="streaming-chunked"):
            payload_rule(streaming)


@given(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=6))
def test_the_canonical_query_does_not_depend_on_spelling(pairs: list[tuple[str, str]]) -> None:
    """`%7E` or `~`, `%2f` or `%2F`, any order: one canonical query, every byte encoded."""
    loose = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs if k)
    strict = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in reversed(pairs) if k)
    assert canonical_query(loose) == canonical_query(strict)
    assert all(ch.isalnum() or ch in "-_.~%=&" for ch in canonical_query(loose))
