"""Parse: the AgentSecrets request protocol, X-AS-* headers read into one `ProxySpec` (the
target, the method, the caller's token and the injections). Every later stage works from
the spec, whichever entry point (/proxy, or a route) produced it."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from blindkey.config.hosts import DEFAULT_PORTS, HostError, normalize_host, parse_port
from blindkey.config.model import SECRET_NAME
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.token_scan import TokenScan

PREFIX = "x-as-"
# RFC 9110 §7.6.1: headers of one connection, never passed on in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
HTTP_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
_FORBIDDEN_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
    }
)
_FORBIDDEN_METHODS = frozenset({"CONNECT", "TRACE"})


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # normalised: lowercase, IDNA, no trailing dot, IPv6 without brackets
    port: int
    path_query: str  # as sent (already percent-encoded), never empty
    original: str

    @functools.cached_property
    def host_header(self) -> str:  # a parsed Target is memoised, so this is worked out once
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


@dataclass(frozen=True)
class Injection:
    style: str
    key: str  # header name, query parameter, body path or form field; "" for bearer/basic
    secret: str


@dataclass(frozen=True)
class ProxySpec:
    target: Target
    method: str
    token: str | None
    injections: tuple[Injection, ...]
    # A route call's: the agent token in any spelling is refused in what goes upstream.
    token_scan: TokenScan | None = None
    # Proxy mode (a request inside an intercepted tunnel): its body, already read and
    # searched for placeholders, and placeholder -> secret for the swap.
    body: bytes | None = None
    via: str | None = None
    placeholders: Mapping[str, str] | None = None

    # Worked out once per spec, not per read: several stages and the record read them, and
    # a spec parsed from the same headers is memoised (parse_spec).
    secret_names: list[str] = field(init=False, repr=False, compare=False)
    styles: list[str] = field(init=False, repr=False, compare=False)
    # Whether the call signs with AWS keys (X-AS-Inject-Sigv4).
    signs: bool = field(init=False, repr=False, compare=False)
    buffers_body: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        injections = self.injections
        derived = {
            "secret_names": sorted({i.secret for i in injections}),
            "styles": sorted({i.style for i in injections}),
            "signs": any(i.style == "sigv4" for i in injections),
            "buffers_body": self.body is not None
            or any(i.style in ("body", "form") for i in injections),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


def _bad(message: str) -> ProxyError:
    return ProxyError("bad_request", message)


# Agents call the same few URLs and spell their injections the same way every time; both
# parses are pure (a refusal raises, and exceptions are not cached), so they are memoised.
@functools.lru_cache(maxsize=1024)
def parse_target(text: str | None) -> Target:
    if not text:
        raise _bad("X-AS-Target-URL is required: the absolute http(s) URL to call")
    if _URL_FORBIDDEN.search(text):
        raise _bad("X-AS-Target-URL must not contain spaces or control characters")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise _bad("X-AS-Target-URL is not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _bad("X-AS-Target-URL must be an absolute http:// or https:// URL")
    netloc = parts.netloc
    if not netloc:
        raise _bad("X-AS-Target-URL has no host")
    if "@" in netloc:
        raise _bad("X-AS-Target-URL must not contain userinfo (user@host)")
    if "\\" in text.split("?", 1)[0]:
        raise _bad("X-AS-Target-URL must not contain backslashes")
    host_text, port = netloc, DEFAULT_PORTS[scheme]
    if netloc.startswith("["):
        close = netloc.find("]")
        if close < 0:
            raise _bad("X-AS-Target-URL has an unclosed IPv6 bracket")
        host_text, rest = netloc[: close + 1], netloc[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _bad("X-AS-Target-URL has text after the IPv6 address")
            port = _port(rest[1:], text)
    elif ":" in netloc:
        host_text, port_text = netloc.rsplit(":", 1)
        port = _port(port_text, text)
    try:
        host = normalize_host(host_text)
    except HostError as exc:
        raise _bad(f"X-AS-Target-URL: {exc}") from exc
    path = parts.path or "/"
    path_query = f"{path}?{parts.query}" if parts.query else path
    return Target(scheme=scheme, host=host, port=port, path_query=path_query, original=text)


def _port(text: str, url: str) -> int:
    try:
        return parse_port(text, "X-AS-Target-URL")
    except HostError as exc:
        raise _bad("X-AS-Target-URL has an invalid port") from exc


@functools.lru_cache(maxsize=1024)
def parse_injection(name: str, value: str) -> Injection:
    """`name` is the header name as sent, minus `X-AS-Inject-`."""
    lowered = name.lower()
    if lowered in ("bearer", "basic", "sigv4"):
        style, key = lowered, ""
    else:
        style, sep, key = name.partition("-")
        style = style.lower()
        if style not in ("header", "query", "body", "form") or not sep:
            raise _bad(
                f"unknown injection header X-AS-Inject-{name}; styles: "
                "Bearer, Basic, Sigv4, Header-<Name>, Query-<param>, Body-<a.b>, Form-<field>"
            )
        if not key:
            raise _bad(f"X-AS-Inject-{name} names no {style} to inject into")
        if style == "header":
            if (
                not HTTP_TOKEN.match(key)
                or key.lower() in _FORBIDDEN_HEADERS
                or key.lower().startswith(PREFIX)
            ):
                raise _bad(f"X-AS-Inject-{name}: {key!r} is not a header blindkey will set")
        elif style == "body" and any(not part for part in key.split(".")):
            raise _bad(f"X-AS-Inject-{name}: empty segment in body path {key!r}")
    secret = value.strip()
    if not SECRET_NAME.match(secret):
        raise _bad(
            f"X-AS-Inject-{name}: invalid secret name; names start with a letter or '_' and "
            "hold letters, digits, '_', '.', '-' (at most 128)"
        )
    return Injection(style=style, key=key, secret=secret)


def header_text(name: str, value: str) -> str:
    """Header bytes arrive as latin-1 text; X-AS-* values are read as the UTF-8 clients send."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError) as exc:
        raise _bad(f"{name} is not valid UTF-8") from exc


def request_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    """The caller's headers as sent: names in their own case, bytes kept one to one."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


def parse_spec(method: str, raw_headers: list[tuple[str, str]]) -> ProxySpec:
    """Read the X-AS-* headers; `raw_headers` keeps the case the caller sent."""
    given = tuple((name, value) for name, value in raw_headers if name[:5].lower() == PREFIX)
    return _parsed_spec(method, given)


# An agent sends the same X-AS-* headers call after call: the spec they make is parsed
# once (a refusal raises, and exceptions are not cached). The key holds the caller's
# token, as the spec does.
@functools.lru_cache(maxsize=1024)
def _parsed_spec(method: str, given: tuple[tuple[str, str], ...]) -> ProxySpec:
    target_url = as_method = token = None
    injections: list[Injection] = []
    sigv4_scope: dict[str, str] = {}
    for name, raw_value in given:
        lowered = name.lower()
        value = header_text(name, raw_value)
        if lowered == "x-as-target-url":
            if target_url is not None:
                raise _bad("X-AS-Target-URL given more than once")
            target_url = value.strip()
        elif lowered == "x-as-method":
            as_method = value.strip().upper()
        elif lowered == "x-as-agent-token":
            token = value.strip()
        elif lowered.startswith("x-as-inject-"):
            injections.append(parse_injection(name[len("x-as-inject-") :], value))
        elif lowered in SIGV4_SCOPE_HEADERS:
            sigv4_scope[lowered] = value.strip()
    target = parse_target(target_url)
    if sigv4_scope:
        injections = sigv4_scoped(injections, sigv4_scope)
    if not injections:
        raise _bad("at least one X-AS-Inject-* header is required")
    seen = set()
    for injection in injections:
        slot = (
            ("authorization", "")
            if injection.style in ("bearer", "basic", "sigv4")
            else (
                injection.style,
                injection.key.lower() if injection.style == "header" else injection.key,
            )
        )
        if injection.style == "header" and injection.key.lower() == "authorization":
            slot = ("authorization", "")
        if slot in seen:
            raise _bad(f"two injections write the same place ({injection.style} {injection.key})")
        seen.add(slot)
    if {"body", "form"} <= {i.style for i in injections}:
        raise _bad("a request cannot inject both Body-* and Form-* fields")
    return ProxySpec(
        target=target,
        method=proxy_method(as_method or method),
        token=token or None,
        injections=tuple(injections),
    )


# X-AS-Inject-Sigv4's region and service, when the host does not name them.
SIGV4_SCOPE_HEADERS = ("x-as-sigv4-region", "x-as-sigv4-service")
_SCOPE_PART = re.compile(r"^[a-z0-9-]{1,64}\Z")


def sigv4_scoped(injections: list[Injection], given: Mapping[str, str]) -> list[Injection]:
    """A Sigv4 injection carries the region and service the caller named, as its key
    `region/service` (either may be empty: then the host tells)."""
    for header, part in given.items():
        if not _SCOPE_PART.match(part):
            raise _bad(f"{header}: {part[:64]!r} is not an AWS region or service name")
    if not given:
        return injections
    key = f"{given.get('x-as-sigv4-region', '')}/{given.get('x-as-sigv4-service', '')}"
    return [Injection(i.style, key, i.secret) if i.style == "sigv4" else i for i in injections]


def proxy_method(verb: str) -> str:
    """The method to send upstream; CONNECT and TRACE are not proxied."""
    if not HTTP_TOKEN.match(verb) or verb.upper() in _FORBIDDEN_METHODS:
        raise _bad(f"method {verb[:16]!r} cannot be proxied")
    return verb.upper()
