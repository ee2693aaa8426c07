"""`aws` secrets with `--role-arn`: the stored keys never sign an agent's request. They sign
one call, STS AssumeRole (with sigv4_sign, the proxy's own signer), and the role's temporary
keys with their session token are what the proxy signs with, renewed (minted.py) a minute
before STS says they expire. The stored keys stay in the broker like a refresh token; the
temporary keys are redacted part by part like any aws value."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

from blindkey.broker.credentials.aws import (
    REGION,
    ROLE_ARN,
    AwsKeys,
    AwsKeysError,
    parse_keys,
)
from blindkey.broker.credentials.http import TokenClient
from blindkey.broker.credentials.provider import Credential, Secret
from blindkey.broker.credentials.sigv4_sign import Scope, authorization, timestamp
from blindkey.broker.protocol import BrokerDenied
from blindkey.config.secrets_table import SecretPolicy

STS_VERSION = "2011-06-15"
DURATION = 3600  # what every role allows (MaxSessionDuration is at least an hour)
GLOBAL_REGION = "us-east-1"  # where sts.amazonaws.com signs
_SESSION_NAME = re.compile(r"[^\w+=,.@-]")
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_FORM = "application/x-www-form-urlencoded; charset=utf-8"


def sts_url(policy: SecretPolicy) -> str:
    """`sts_url`, else the regional endpoint of the secret's region, else the global one."""
    if policy.sts_url:
        return policy.sts_url
    if policy.region:
        return f"https://sts.{policy.region}.amazonaws.com/"
    return "https://sts.amazonaws.com/"


def _region(policy: SecretPolicy, host: str) -> str:
    labels = host.split(".")
    if len(labels) >= 4 and labels[0] == "sts" and REGION.match(labels[1]):
        return labels[1]  # sts.REGION.amazonaws.com signs for REGION
    return policy.region or GLOBAL_REGION


def signed_request(
    keys: AwsKeys, policy: SecretPolicy, session: str, now: datetime
) -> tuple[str, dict[str, str], bytes]:
    """(url, headers, body) of AssumeRole, signed with `keys` as botocore signs it."""
    url = sts_url(policy)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.username is not None or parts.password is not None or not host:
        raise BrokerDenied("bad_request", f"sts_url {url[:200]!r} is not a plain http(s) URL")
    host_header = f"{host}:{parts.port}" if parts.port else host
    body = urlencode(
        {"Action": "AssumeRole", "Version": STS_VERSION, "RoleArn": policy.role_arn,
         "RoleSessionName": session, "DurationSeconds": str(DURATION)}
    ).encode()  # fmt: skip
    when = timestamp(now)
    headers = {"Host": host_header, "Content-Type": _FORM, "X-Amz-Date": when}
    if keys.session_token:
        headers["X-Amz-Security-Token"] = keys.session_token
    by_name = {name.lower(): value for name, value in headers.items()}
    payload = hashlib.sha256(body).hexdigest()
    scope = Scope(_region(policy, host), "sts")
    request = ("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), payload)
    headers["Authorization"] = authorization(
        keys, scope, request, lambda name: [by_name[name]], sorted(by_name), when
    )
    return url, headers, body


def _field(root: ElementTree.Element, name: str) -> str:
    """The text of the first element called `name`, whatever its namespace."""
    for element in root.iter():
        if element.tag.rpartition("}")[2] == name:
            return (element.text or "").strip()
    return ""


def _parsed(where: str, status: int, body: bytes) -> ElementTree.Element:
    # STS never declares a DTD: one that does is refused before the parser sees it, so no
    # entity (expanding, or external) is ever read; the body is capped at MAX_ANSWER.
    if b"<!" in body.replace(b"<![CDATA[", b""):
        raise BrokerDenied("upstream_error", f"{where} answered {status} with a DTD")
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - no DTD, bounded (above)
    except ElementTree.ParseError:
        raise BrokerDenied("upstream_error", f"{where} answered {status} with no XML") from None
    if status != 200:
        code = _field(root, "Code")
        said = f" {code}" if _ERROR_CODE.match(code) else ""
        raise BrokerDenied("upstream_error", f"{where} answered {status}{said}")
    return root


class AssumeRole:
    def __init__(self, client: TokenClient, clock: Callable[[], float]) -> None:
        self.client = client
        self.clock = clock

    async def issue(self, secret: Secret, material: str) -> Credential:
        policy = secret.policy
        if not ROLE_ARN.match(policy.role_arn):
            raise BrokerDenied(
                "secret_denied", f"[secrets.{secret.name}] role_arn is not an IAM role's ARN"
            )
        try:
            keys = parse_keys(material)
        except AwsKeysError:  # never its message alone: the name says whose keys
            raise BrokerDenied(
                "secret_denied", f"the stored value of {secret.name} is not a set of AWS keys"
            ) from None
        session = _SESSION_NAME.sub("-", f"blindkey-{secret.name}")[:64]
        # SigV4 dates are AWS's to check: the wall clock, not the broker's.
        asked, wall = self.clock(), time.time()
        url, headers, body = signed_request(keys, policy, session, datetime.now(UTC))
        where, status, answer = await self.client.exchange(secret, url, headers, data=body)
        root = _parsed(where.replace("token endpoint", "STS"), status, answer)
        fields = [_field(root, n) for n in ("AccessKeyId", "SecretAccessKey", "SessionToken")]
        try:
            temporary = parse_keys(AwsKeys(*fields).to_value())
            expires = datetime.fromisoformat(_field(root, "Expiration")).timestamp()
        except (AwsKeysError, ValueError):
            raise BrokerDenied(
                "upstream_error", f"STS answered {secret.name} with no usable credentials"
            ) from None
        if not temporary.session_token:
            raise BrokerDenied("upstream_error", f"STS answered {secret.name} with no session")
        return Credential(temporary.to_value(), asked + max(expires - wall, 0.0))
