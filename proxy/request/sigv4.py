"""AWS Signature Version 4, for `aws` secrets: `X-AS-Inject-Sigv4`, and in proxy mode the
re-signing of a request an AWS SDK signed with a placeholder as its access key id.

The signature (broker/credentials/sigv4_sign.py) is written with hmac and hashlib, as the
AWS documentation lays it out, rather than borrowed from botocore: botocore's signer needs
botocore's request type and pulls in botocore, jmespath, urllib3 and dateutil for some
hundred lines; its signer is the oracle of the tests instead (tests/proxy/test_sigv4*.py),
so the two cannot drift apart unnoticed. The broker signs its STS calls with the same code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from multidict import CIMultiDict

from blindkey.broker.credentials.aws import AwsKeys, maybe_keys
from blindkey.broker.credentials.sigv4_sign import Scope as Scope
from blindkey.broker.credentials.sigv4_sign import authorization as authorization
from blindkey.broker.credentials.sigv4_sign import canonical_query as canonical_query
from blindkey.broker.credentials.sigv4_sign import timestamp
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.parse import Injection
from blindkey.proxy.request.sigv4_chunks import SIGNED_CHUNKS, ChunkSigner

UNSIGNED = "UNSIGNED-PAYLOAD"
# aws-chunked with a checksum trailer and no chunk signatures (SDKs' default for S3 uploads):
# signed as this literal, the body streams on as it came.
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
DEFAULT_REGION = "us-east-1"  # where AWS's global endpoints (iam, sts, s3.amazonaws.com) sign
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+\Z")
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}\Z")
_AWS_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn")
# Signed besides x-amz-*: what AWS services check, and nothing a hop on the way rewrites.
_ALWAYS_SIGNED = ("host", "content-type", "content-md5")
_SDK_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request\s*,\s*SignedHeaders=(?P<signed>[a-z0-9;._-]+)\s*,"
    r"\s*Signature=[0-9a-f]+\s*\Z"
)


def scope_from_host(host: str) -> tuple[str, str]:
    """(service, region) as AWS endpoints name them: `SERVICE.REGION.amazonaws.com`,
    `BUCKET.s3.REGION...`, `s3.dualstack.REGION...`, `s3-REGION...`, global `SERVICE.amazonaws.com`
    (region ""); ("", "") for a host that is not AWS's."""
    suffix = next((s for s in _AWS_SUFFIXES if host.endswith(s)), None)
    if suffix is None:
        return "", ""
    labels = [label for label in host[: -len(suffix)].split(".") if label != "dualstack"]
    if not labels or not labels[-1]:
        return "", ""
    if len(labels) >= 2 and _REGION.match(labels[-1]):
        return labels[-2], labels[-1]
    service, _, region = labels[-1].partition("-")
    if service == "s3" and _REGION.match(region):
        return "s3", region
    return labels[-1], ""


def payload_rule(declared: str | None) -> str | None:
    """What to sign as the payload's hash: the literal of an unsigned payload (whole, or
    chunked with an unsigned trailer), or the SHA-256 the caller already declared (an SDK
    always does); None: hash the body. A declared hash is signed as it is, and the body
    streams: the upstream checks the body against it, so a wrong one fails there, and reading
    a multi-GiB upload whole to hash it again would only refuse it. A streaming-chunked upload
    with signed chunks is refused: each chunk would need a signature made with the key."""
    if declared is None:
        return None
    text = declared.strip()
    if text.upper() in (UNSIGNED, UNSIGNED_TRAILER):
        return text.upper()
    if _SHA256_HEX.match(text):
        return text.lower()
    if text.upper() == SIGNED_CHUNKS:
        return SIGNED_CHUNKS
    if text.upper().startswith("STREAMING-"):
        raise ProxyError(
            "bad_request",
            f"X-Amz-Content-Sha256: {text[:48]}: blindkey does not sign this kind of "
            f"streaming-chunked upload (it signs {SIGNED_CHUNKS} and {UNSIGNED_TRAILER}); "
            "let the SDK send unsigned payloads with a trailing checksum (botocore's default, "
            "and the AWS SDKs' over https), or X-Amz-Content-Sha256: UNSIGNED-PAYLOAD",
        )
    return None


@dataclass(frozen=True)
class SdkSignature:
    """What an SDK's own `Authorization: AWS4-HMAC-SHA256 ...` says (its proof is dropped)."""

    key_id: str
    scope: Scope
    signed: tuple[str, ...]


def parse_sdk_authorization(value: str) -> SdkSignature | None:
    found = _SDK_AUTH.match(value.strip())
    if found is None:
        return None
    scope = Scope(found["region"], found["service"])
    return SdkSignature(found["key"], scope, tuple(found["signed"].split(";")))


def default_signed(names: list[str]) -> list[str]:
    """The headers X-AS-Inject-Sigv4 signs among those the request carries."""
    lowered = {name.lower() for name in names}
    return [name for name in sorted(lowered) if name in _ALWAYS_SIGNED or name.startswith("x-amz-")]


def injection_key(region: str, service: str, signed: tuple[str, ...] = ()) -> str:
    """A Sigv4 injection's key: `region/service[/signed;headers]`, parts empty when unsaid."""
    return f"{region}/{service}/{';'.join(signed)}" if signed else f"{region}/{service}"


def check_styles(injections: Sequence[Injection], values: Mapping[str, str]) -> None:
    """AWS keys sign requests and never travel: an aws value is used by Sigv4 only, and
    Sigv4 signs with aws values only."""
    for injection in injections:
        is_keys = maybe_keys(values[injection.secret]) is not None
        if injection.style == "sigv4" and not is_keys:
            raise ProxyError(
                "bad_request",
                f"secret {injection.secret} is not an aws secret (`secrets set "
                f"{injection.secret} --kind aws`): X-AS-Inject-Sigv4 signs with AWS keys only",
            )
        if injection.style != "sigv4" and is_keys:
            raise ProxyError(
                "bad_request",
                f"secret {injection.secret} holds AWS keys, which sign requests and are never "
                "sent themselves: use X-AS-Inject-Sigv4 (in proxy mode: an AWS SDK with the "
                "placeholder as its access key id)",
            )


def unsent(injections: Sequence[Injection], values: Mapping[str, str]) -> dict[str, str]:
    """The values that may be put into a request as they are (all but the signing keys)."""
    signing = {i.secret for i in injections if i.style == "sigv4"}
    return {name: value for name, value in values.items() if name not in signing}


@dataclass(frozen=True)
class Outgoing:
    """What a signature covers besides the headers."""

    method: str
    host: str
    host_header: str
    path_query: str
    body: bytes | None  # None: streamed (UNSIGNED-PAYLOAD)
    length: int | None


def _scope(injection: Injection, host: str, configured_region: str) -> tuple[Scope, list[str]]:
    region, service, signed = ([*injection.key.split("/", 2), "", "", ""])[:3]
    host_service, host_region = scope_from_host(host)
    service = service or host_service
    if not service:
        raise ProxyError(
            "bad_request",
            f"X-AS-Inject-Sigv4: the AWS service cannot be told from the host {host}: name it "
            "with X-AS-Sigv4-Service (and the region with X-AS-Sigv4-Region)",
        )
    region = region or host_region or configured_region or DEFAULT_REGION
    return Scope(region, service), [name for name in signed.split(";") if name]


def sign(
    headers: CIMultiDict[str],
    outgoing: Outgoing,
    injection: Injection,
    keys: AwsKeys,
    configured_region: str,
    now: datetime | None = None,
) -> ChunkSigner | None:
    """Sign the request in place: X-Amz-Date, X-Amz-Content-Sha256, X-Amz-Security-Token
    when the keys have one, and Authorization. Signed: the headers the SDK signed (proxy
    mode), else host, content-type, content-md5 and every x-amz-* header. For a body of
    signed chunks: what signs them (sigv4_chunks.py)."""
    scope, sdk_signed = _scope(injection, outgoing.host, configured_region)
    payload = payload_rule(headers.get("X-Amz-Content-Sha256"))
    if payload is None or (_SHA256_HEX.match(payload) and outgoing.body is not None):
        # A body in hand is hashed as it is sent: a value put into it changed it.
        payload = hashlib.sha256(outgoing.body or b"").hexdigest()
    when = timestamp(now)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-Sha256", "X-Amz-Security-Token"):
        headers.popall(name, None)
    headers["X-Amz-Date"] = when
    headers["X-Amz-Content-Sha256"] = payload
    if keys.session_token:
        headers["X-Amz-Security-Token"] = keys.session_token
    length = len(outgoing.body) if outgoing.body is not None else outgoing.length

    def lookup(name: str) -> list[str]:
        if name == "host":
            return [outgoing.host_header]
        if name == "content-length":
            return [] if length is None else [str(length)]
        return headers.getall(name, [])

    present = ["host", *headers.keys()]
    if sdk_signed:
        added = [n.lower() for n in headers if n.lower().startswith("x-amz-")]
        signed = [n for n in {*sdk_signed, *added} if lookup(n)]
    else:
        signed = default_signed(present)
    request = (outgoing.method, outgoing.path_query, payload)
    headers["Authorization"] = authorization(keys, scope, request, lookup, signed, when)
    if payload != SIGNED_CHUNKS:
        return None
    return ChunkSigner.of(keys, scope, when, headers["Authorization"])


def streams_as_declared(headers: Mapping[str, str]) -> bool:
    """An upload an SDK declared unsigned or chunked: its body is the SDK's, streamed as it
    came (a text upload to S3 can be GiBs), never read whole to look for placeholders; one
    swapped in would break its chunks' framing anyway."""
    declared = headers.get("X-Amz-Content-Sha256", "").strip().upper()
    return declared.startswith(("UNSIGNED-", "STREAMING-")) or (
        "aws-chunked" in headers.get("Content-Encoding", "").lower()
    )


def signs_payload(injections: Sequence[Injection], headers: CIMultiDict[str]) -> bool:
    """Whether the body must be read whole to be hashed for a signature."""
    if not any(i.style == "sigv4" for i in injections):
        return False
    return payload_rule(headers.get("X-Amz-Content-Sha256")) is None


def sign_all(
    headers: CIMultiDict[str],
    injections: Sequence[Injection],
    values: Mapping[str, str],
    outgoing: Outgoing,
    region_of: Callable[[str], str],
) -> list[ChunkSigner]:
    """Every Sigv4 injection of the call (at most one: it owns Authorization); what signs
    the chunks of the body again, if the body is of signed chunks."""
    chunks: list[ChunkSigner] = []
    for injection in injections:
        if injection.style == "sigv4":
            keys = maybe_keys(values[injection.secret])
            assert keys is not None  # check_styles refused any other value
            signer = sign(headers, outgoing, injection, keys, region_of(injection.secret))
            chunks.extend([signer] if signer is not None else [])
    return chunks


def sdk_key_id(authorization: str) -> str | None:
    """The access key id an SDK signed with: on a route, where the agent token stands."""
    sdk = parse_sdk_authorization(authorization)
    return None if sdk is None else sdk.key_id


def sdk_scoped(injection: Injection, request: web.BaseRequest) -> Injection:
    """A route's Sigv4 signs for the region and service its SDK signed for, if it did."""
    if injection.style != "sigv4":
        return injection
    sdk = parse_sdk_authorization(request.headers.get("Authorization", ""))
    if sdk is None:
        return injection
    return Injection("sigv4", injection_key(sdk.scope.region, sdk.scope.service), injection.secret)
