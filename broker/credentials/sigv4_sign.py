"""The SigV4 signature itself (hmac and hashlib, as the AWS documentation lays it out): the
proxy signs agents' requests with it (proxy/request/sigv4.py), the broker its own calls to
STS (assume_role.py). botocore's signer is the oracle of the tests of both."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote_to_bytes

from blindkey.broker.credentials.aws import AwsKeys

ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class Scope:
    region: str
    service: str


def canonical_path(path: str, service: str) -> str:
    """S3 signs the path as sent; every other service its normalised form, encoded again."""
    if service == "s3":
        return path or "/"
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    normal = "/" + "/".join(kept) + ("/" if path.endswith("/") and kept else "")
    return quote(normal, safe="/~")


def canonical_query(query: str) -> str:
    """Names and values decoded and encoded again as AWS does, sorted by name then value."""
    pairs = []
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        pairs.append(
            (
                quote(unquote_to_bytes(name), safe="-_.~"),
                quote(unquote_to_bytes(value), safe="-_.~"),
            )
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def credential_scope(scope: Scope, when: str) -> str:
    return f"{when[:8]}/{scope.region}/{scope.service}/aws4_request"


def signing_key(keys: AwsKeys, scope: Scope, when: str) -> bytes:
    key = _hmac(f"AWS4{keys.secret_access_key}".encode(), when[:8])
    for part in (scope.region, scope.service, "aws4_request"):
        key = _hmac(key, part)
    return key


def signature(keys: AwsKeys, scope: Scope, when: str, canonical_request: str) -> str:
    to_sign = "\n".join(
        (
            ALGORITHM,
            when,
            credential_scope(scope, when),
            hashlib.sha256(canonical_request.encode("utf-8")).hexdigest(),
        )
    )
    key = signing_key(keys, scope, when)
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def chunk_signature(key: bytes, when: str, scope: str, previous: str, chunk: bytes) -> str:
    """One chunk's signature in a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body: chained from the
    one before it (the first from the request's own signature), as S3's documentation lays
    it out. `key` is signing_key(...), `scope` credential_scope(...)."""
    to_sign = "\n".join(
        (f"{ALGORITHM}-PAYLOAD", when, scope, previous, EMPTY_SHA256,
         hashlib.sha256(chunk).hexdigest())
    )  # fmt: skip
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


Lookup = Callable[[str], "list[str]"]


def authorization(
    keys: AwsKeys,
    scope: Scope,
    request: tuple[str, str, str],
    lookup: Lookup,
    signed: list[str],
    when: str,
) -> str:
    """The Authorization value for (method, path and query, payload hash); `lookup` gives
    a header's values by its lowercase name, and `signed` names the headers to sign."""
    method, path_query, payload = request
    path, _, query = path_query.partition("?")
    names = sorted(set(signed))
    lines = [f"{name}:{','.join(' '.join(v.split()) for v in lookup(name))}" for name in names]
    canonical = "\n".join(
        (
            method.upper(),
            canonical_path(path, scope.service),
            canonical_query(query),
            "\n".join(lines) + "\n",
            ";".join(names),
            payload,
        )
    )
    proof = signature(keys, scope, when, canonical)
    return (
        f"{ALGORITHM} Credential={keys.access_key_id}/{when[:8]}/{scope.region}/"
        f"{scope.service}/aws4_request, SignedHeaders={';'.join(names)}, Signature={proof}"
    )


def timestamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
