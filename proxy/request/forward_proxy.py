"""The third entry point: a request inside a tunnel blindkey intercepted (proxy mode).

The program sent an ordinary request to its API, holding placeholders where keys go. The
target is the tunnel's host and the request's own path; the secrets are those whose
placeholders appear in it — in header values (inside `Authorization: Basic` too), the
path and query, or a JSON, form or text body. A placeholder of a secret that is not bound
to this host is refused wherever it is: a placeholder leads to its own hosts only. Then
the call passes the stages of /proxy like any other, and `swap` puts the values in.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, cast
from urllib.parse import quote

import orjson
from aiohttp import web
from multidict import CIMultiDict

from blindkey.audit.record import AuditRecord
from blindkey.broker.protocol import BrokerDenied
from blindkey.config.model import Settings
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.inject import read_limited
from blindkey.proxy.request.parse import (
    Injection,
    ProxySpec,
    Target,
    parse_target,
    request_headers,
)
from blindkey.proxy.request.sigv4 import (
    injection_key,
    parse_sdk_authorization,
    streams_as_declared,
)
from blindkey.proxy.tls.head import no_token, proxy_token
from blindkey.proxy.tls.session import Session, bound_secrets

if TYPE_CHECKING:
    from blindkey.proxy.runtime import ProxyRuntime

STYLE = "placeholder"
# Bodies that are read and searched for placeholders; any other streams as it is.
_TEXT_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/")


def is_text(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    return kind.startswith(_TEXT_TYPES) or kind.endswith("+json")


def _basic_parts(value: str) -> str | None:
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def found_in(texts: Iterable[str], placeholders: Mapping[str, str]) -> set[str]:
    """The secrets whose placeholders appear in any of `texts`."""
    names: set[str] = set()
    for text in texts:
        if "bk_" not in text:
            continue
        names.update(name for placeholder, name in placeholders.items() if placeholder in text)
    return names


def _searched(raw: list[tuple[str, str]], path_query: str, body: bytes | None) -> list[str]:
    texts = [path_query]
    for name, value in raw:
        texts.append(value)
        if name.lower() == "authorization":
            decoded = _basic_parts(value)
            if decoded is not None:
                texts.append(decoded)
    if body:
        texts.append(body.decode("utf-8", "surrogateescape"))
    return texts


def tunnel_target(request: web.BaseRequest, session: Session) -> Target:
    """Inside a tunnel the host is the one CONNECT named, whatever the Host header says."""
    host = f"[{session.host}]" if ":" in session.host else session.host
    authority = host if session.port == 443 else f"{host}:{session.port}"
    path_query = request.raw_path or "/"
    if not path_query.startswith("/"):
        raise ProxyError("bad_request", "inside a tunnel a request names a path (origin-form)")
    return Target(
        "https", session.host, session.port, path_query, f"https://{authority}{path_query}"
    )


def absolute_target(request: web.BaseRequest) -> Target:
    """`GET http://host/path` (HTTP_PROXY): the target is the request line's own."""
    target = parse_target(request.raw_path)
    if target.scheme != "http":
        raise ProxyError(
            "bad_request", "an https:// target goes through CONNECT, not a request line"
        )
    return target


def via_of(target: Target) -> str:
    return "connect" if target.scheme == "https" else "proxy"


async def parse_forwarded(
    settings: Settings,
    request: web.BaseRequest,
    session: Session,
    target: Target,
    record: AuditRecord,
) -> tuple[ProxySpec, list[tuple[str, str]]]:
    """The spec of a request sent to blindkey as a proxy: in a tunnel, or absolute-form.
    The record says where it was going before anything can refuse it."""
    record.via, record.method = via_of(target), request.method[:16]
    record.url, record.host = target.original[:2048], target.host
    raw = request_headers(request)
    authority, path_query = target.host_header, target.path_query
    body = None
    resigned = sdk_signatures(raw, session.placeholders)
    if (
        request.body_exists
        and is_text(request.headers.get("Content-Type", ""))
        and not (resigned and streams_as_declared(request.headers))
    ):
        limits = settings.limits
        body = await read_limited(request, limits.max_request_body, limits.body_read_timeout)
    names = found_in(_searched(raw, path_query, body), session.placeholders)
    bound = set(bound_secrets(settings, session.agent, target.host, target.port, target.scheme))
    foreign = sorted(names - bound)
    if foreign:
        record.secrets = foreign
        raise ProxyError(
            "secret_denied",
            f"the placeholder of {', '.join(foreign)} was sent to {authority}, which "
            f"{'that secret is' if len(foreign) == 1 else 'those secrets are'} not bound to "
            "(for this agent): a placeholder is replaced only on the way to its own hosts",
        )
    injections = tuple(resigned.get(name, Injection(STYLE, "", name)) for name in sorted(names))
    spec = ProxySpec(
        target,
        request.method,
        session.token,
        injections,
        body=body,
        via=via_of(target),
        placeholders=session.placeholders,
    )
    return spec, raw


def sdk_signatures(
    raw: list[tuple[str, str]], placeholders: Mapping[str, str]
) -> dict[str, Injection]:
    """An AWS SDK that signed with a placeholder as its access key id: its secret signs the
    request again, for the SDK's region, service and signed headers (sigv4.py)."""
    for name, value in raw:
        if name.lower() == "authorization":
            sdk = parse_sdk_authorization(value)
            secret = None if sdk is None else placeholders.get(sdk.key_id)
            if sdk is not None and secret is not None:
                key = injection_key(sdk.scope.region, sdk.scope.service, sdk.signed)
                return {secret: Injection("sigv4", key, secret)}
    return {}


async def identify(runtime: ProxyRuntime, token: str) -> tuple[str, str]:
    """The agent of a proxy-mode token; an unknown one is 407, as a missing one."""
    try:
        return await runtime.authoriser.identify(token)
    except BrokerDenied as exc:
        if exc.code != "unauthenticated":
            raise
        error = no_token()
        error.message = "unknown or revoked agent token in Proxy-Authorization"
        raise error from None


async def placeholders_of(runtime: ProxyRuntime, env: str) -> dict[str, str]:
    """placeholder -> secret for every value of `env` (the broker's, never a value)."""
    reply = await runtime.authoriser.broker.call("placeholders", env=env)
    found = cast(dict[str, str], reply.get("placeholders") or {})
    return {placeholder: name for name, placeholder in found.items()}


async def absolute_session(runtime: ProxyRuntime, request: web.BaseRequest) -> Session:
    """Who sends `GET http://host/path` to blindkey as its proxy: Proxy-Authorization."""
    token = proxy_token(request.headers.getall("Proxy-Authorization", []))
    if token is None:
        raise no_token()
    agent, env = await identify(runtime, token)
    target = absolute_target(request)
    found = await placeholders_of(runtime, env)
    return Session(target.host, target.port, token, agent, env, found, scheme="http")


Encode = Callable[[str], str]


def _raw(value: str) -> str:
    return value


def _json(value: str) -> str:
    return orjson.dumps(value).decode("utf-8")[1:-1]


def _url(value: str) -> str:
    return quote(value, safe="")


def swap(
    text: str, placeholders: Mapping[str, str], values: Mapping[str, str], encode: Encode = _raw
) -> str:
    """`text` with each placeholder replaced by its value, spelled for where it stands (a
    JSON string, a URL): a value never changes the shape of what it is put in."""
    if "bk_" not in text:
        return text
    for placeholder, name in placeholders.items():
        if placeholder in text and name in values:
            text = text.replace(placeholder, encode(values[name]))
    return text


def _header_value(
    name: str, value: str, placeholders: Mapping[str, str], values: Mapping[str, str]
) -> str:
    new = swap(value, placeholders, values)
    if name.lower() == "authorization":
        decoded = _basic_parts(value)
        if decoded is not None and "bk_" in decoded:
            swapped = swap(decoded, placeholders, values).encode("utf-8")
            new = "Basic " + base64.b64encode(swapped).decode("ascii")
    if new != value and any(ch in new for ch in "\r\n\0"):
        raise ProxyError("bad_request", f"a value cannot be sent in the {name} header")
    return new if new.isascii() else new.encode("utf-8").decode("latin-1")


def swap_headers(
    headers: CIMultiDict[str], placeholders: Mapping[str, str], values: Mapping[str, str]
) -> CIMultiDict[str]:
    return CIMultiDict(
        (name, _header_value(name, value, placeholders, values)) for name, value in headers.items()
    )


def swap_path(path_query: str, placeholders: Mapping[str, str], values: Mapping[str, str]) -> str:
    return swap(path_query, placeholders, values, _url)


def swap_body(
    body: bytes, content_type: str, placeholders: Mapping[str, str], values: Mapping[str, str]
) -> bytes:
    if b"bk_" not in body:
        return body
    kind = content_type.partition(";")[0].strip().lower()
    encode = _json if kind.endswith("json") else _url if kind.endswith("urlencoded") else _raw
    text = body.decode("utf-8", "surrogateescape")
    return swap(text, placeholders, values, encode).encode("utf-8", "surrogateescape")
