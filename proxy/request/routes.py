"""Routes: `ANY /r/NAME/REST?QUERY` read into the same `ProxySpec` the /proxy parser makes,
for SDKs that know only a base URL and a key (`OpenAI(base_url=".../r/openai/v1",
api_key=AGENT_TOKEN)`). Every later stage is the one /proxy uses.

The agent's token travels where the SDK puts its own key: `X-AS-Agent-Token`, else the
route's header (header route) or query parameter (query route), else `Authorization`
(`Bearer TOKEN`, or the password of `Basic`), which no route passes on. A token found in
any other header or query parameter (an SDK set up for another kind of route) is taken
too. It is all taken out of the request here, so no token reaches the upstream, the audit
record's URL or an error message; the injection then writes the real value where it goes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from aiohttp import web

from blindkey.broker.agents import TOKEN_PREFIX
from blindkey.config.model import Route
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.parse import (
    PREFIX,
    Injection,
    ProxySpec,
    Target,
    header_text,
    parse_injection,
    parse_target,
    proxy_method,
    request_headers,
)
from blindkey.proxy.request.sigv4 import sdk_key_id, sdk_scoped
from blindkey.proxy.request.token_scan import scan_for

ROUTE_PREFIX = "/r/"
# X-AS-* headers a route call may carry; the rest belong to /proxy, where the agent names
# the target and the injections itself.
_ROUTE_HEADERS = frozenset({"x-as-agent-token", "x-as-wait-approval"})
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AGENT_TOKEN = re.compile(rf"(?:bearer\s+)?({re.escape(TOKEN_PREFIX)}[A-Za-z0-9_-]{{43}})\Z", re.I)


def _bad(message: str) -> ProxyError:
    return ProxyError("bad_request", message)


def injection_label(route: Route) -> str:
    """The route's injection spelled as the suffix of its X-AS-Inject-* header."""
    if route.style in ("bearer", "basic", "sigv4"):
        return route.style.capitalize()
    return f"{route.style.capitalize()}-{route.param}"


@functools.lru_cache(maxsize=256)
def route_injection(name: str, route: Route) -> Injection:
    """The route's injection, checked by the same rules as an X-AS-Inject-* header."""
    try:
        return parse_injection(injection_label(route), route.secret)
    except ProxyError as exc:
        raise _bad(f"route {name} cannot inject: {exc}; fix [routes.{name}]") from None


@functools.lru_cache(maxsize=256)
def route_base(name: str, to: str) -> Target:
    """The route's base URL, parsed as an X-AS-Target-URL is (and refused for the same)."""
    try:
        base = parse_target(to)
    except ProxyError as exc:
        message = str(exc).replace("X-AS-Target-URL", f"route {name}'s URL")
        raise _bad(message) from None
    if "?" in base.path_query:
        raise _bad(f"route {name}'s URL must not carry a query")
    return base


def check_tail(name: str, tail: str) -> None:
    """Refuse a tail any server on the way could read as climbing out of the base path.

    Servers differ in what they decode before they resolve dot segments: `%2f` and `%5c`
    (`..%2f..%2f`), a second `%25` round (`%252e%252e`), `;` parameters (`..;/` in Tomcat),
    `\\` as a separator, compatibility forms of the dot (`%ef%bc%8e`) and trailing dots or
    spaces (Windows). The tail is decoded once and read the widest way: anything that
    could be a dot segment in any of those readings is refused, and so is anything a
    second decoding would change. The tail itself goes on as sent.
    """
    try:
        decoded = unquote_to_bytes(tail).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"/r/{name}/ paths must be UTF-8 once percent-decoded") from None
    if _PERCENT_ESCAPE.search(decoded):
        raise _bad(f"/r/{name}/ paths may not be percent-encoded twice (%25 before hex digits)")
    if "\\" in decoded or _CONTROL.search(decoded):
        raise _bad(f"/r/{name}/ paths may not contain backslashes or control characters")
    for segment in decoded.split("/"):
        bare = unicodedata.normalize("NFKC", segment.partition(";")[0])
        if "." in bare and not bare.strip(". "):
            raise _bad(f"/r/{name}/ paths may not contain '.' or '..' segments")


@functools.lru_cache(maxsize=1024)
def route_target(name: str, to: str, tail: str, query: str) -> Target:
    """`to` + `/tail` + `?query`; the tail may not climb out of the route's base path."""
    base = route_base(name, to)
    check_tail(name, tail)
    path = f"{base.path_query.rstrip('/')}/{tail}"
    path_query = f"{path}?{query}" if query else path
    return Target(
        scheme=base.scheme,
        host=base.host,
        port=base.port,
        path_query=path_query,
        original=f"{base.scheme}://{base.host_header}{path_query}",
    )


def _basic_password(value: str) -> str | None:
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        pair = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return pair.partition(":")[2] or None


def _bearer(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _stray_token(value: str) -> str | None:
    """An agent token (or `Bearer` one) in a place the route does not read: an SDK set up
    for another kind of route puts its key there. Cheap for every other value."""
    if TOKEN_PREFIX not in value:
        return None
    found = _AGENT_TOKEN.match(value.strip())
    return found.group(1) if found else None


def _take_query_token(query: str, param: str | None) -> tuple[str, str | None]:
    """The query without `param` and without any agent token, and the token it carried."""
    if not query or (param is None and TOKEN_PREFIX not in query):
        return query, None
    kept, token = [], None
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        text = unquote(value.replace("+", " "))
        if unquote(key.replace("+", " ")) == param or _stray_token(text):
            token = token or text or None
            continue
        kept.append(pair)
    return "&".join(kept), token


@dataclass
class _RouteCall:
    """A route call as read, its token taken out of the places a route reads it from."""

    name: str
    route: Route
    tail: str
    query: str
    token: str | None
    offered: tuple[str, ...]  # every agent token taken out, to look for anywhere else
    forwarded: list[tuple[str, str]]
    routes: Mapping[str, Route]


# The edge reads a route call once for its record's URL, then again to parse it.
_READ = web.RequestKey("blindkey_route_call", _RouteCall)


def _read_call(routes: Mapping[str, Route], request: web.BaseRequest) -> _RouteCall:
    call = request.get(_READ)
    if call is None or call.routes is not routes:
        call = request[_READ] = _read_call_anew(routes, request)
    return call


def _read_call_anew(routes: Mapping[str, Route], request: web.BaseRequest) -> _RouteCall:
    path, _, query = request.raw_path[len(ROUTE_PREFIX) :].partition("?")
    name, _, tail = path.partition("/")
    route = routes.get(name)
    if route is None:
        shown = name[:64]
        raise ProxyError(
            "unknown_route", f"no route named {shown!r}; `blindkey route list` shows the routes"
        )
    header_slot = route.param.lower() if route.style == "header" else None
    token = slot_token = authorization = stray = None
    forwarded: list[tuple[str, str]] = []
    for header, value in request_headers(request):
        lowered = header.lower()
        if lowered.startswith(PREFIX):
            if lowered not in _ROUTE_HEADERS:
                raise _bad(
                    f"{header} does not apply to a route: /r/{name}/ sets its own target "
                    "and injection (use /proxy to name them)"
                )
            if lowered == "x-as-agent-token":
                token = header_text(header, value).strip() or None
            forwarded.append((header, value))
        elif lowered == header_slot:
            # The SDK's key: the agent token, or a placeholder. It never goes on.
            slot_token = slot_token or value.strip() or None
        elif lowered == "authorization":
            # Where most SDKs put their key, whatever the route injects (some send the key
            # as a bearer token where the API documents a header): never passed on either.
            authorization = (
                authorization or _bearer(value) or _basic_password(value) or sdk_key_id(value)
            )
        elif (found := _stray_token(value)) is not None:
            stray = stray or found
        else:
            forwarded.append((header, value))
    query, in_query = _take_query_token(query, route.param if route.style == "query" else None)
    if route.style == "query":
        slot_token = in_query
    offered = [t for t in (token, slot_token, authorization, stray, in_query) if t is not None]
    return _RouteCall(
        name=name,
        route=route,
        tail=tail,
        query=query,
        token=token or slot_token or authorization or stray or in_query,
        # Only what has a token's shape is looked for: a placeholder key ("sk-x") is no
        # secret, and a value that is not a valid token is refused 401 before any sending.
        offered=tuple(t for t in offered if _AGENT_TOKEN.match(t)),
        forwarded=forwarded,
        routes=routes,
    )


def parse_route(
    routes: Mapping[str, Route], request: web.BaseRequest
) -> tuple[ProxySpec, list[tuple[str, str]]]:
    """The spec of a route call, and the caller's headers without its token.

    A token anywhere else in what goes upstream (a header's text, the query, the path; the
    body as it streams, in the pipeline) is refused: see proxy/request/token_scan.py.
    """
    call = _read_call(routes, request)
    injection = sdk_scoped(route_injection(call.name, call.route), request)
    scan = scan_for(call.offered)
    parts = [(f"header {h[:64]}", v) for h, v in call.forwarded if not h.lower().startswith(PREFIX)]
    scan.check([*parts, ("the query", call.query), ("the path", call.tail)])
    spec = ProxySpec(
        target=route_target(call.name, call.route.to, call.tail, call.query),
        method=proxy_method(request.method),
        token=call.token,
        injections=(injection,),
        token_scan=scan,
    )
    return spec, call.forwarded


def record_url(routes: Mapping[str, Route], request: web.BaseRequest) -> str:
    """The URL a route call's audit record names from the start, as /proxy records its
    X-AS-Target-URL: the route's target before injection, so a call refused at any point
    is recorded where it was going. A part of the path or query that carries the agent
    token is left out; a call that names no route is recorded under its route name."""
    name = request.raw_path[len(ROUTE_PREFIX) :].partition("?")[0].partition("/")[0]
    route = routes.get(name)
    if route is None:
        return f"{ROUTE_PREFIX}{name[:64]}"
    try:
        base = route_base(name, route.to)
        call = _read_call(routes, request)
    except ProxyError:
        return route.to[:2048]
    scan = scan_for(call.offered)
    url = f"{base.scheme}://{base.host_header}{base.path_query.rstrip('/')}/"
    if not scan.found_text(call.tail):
        url += call.tail
    query = call.query
    if query and scan.found_text(query):
        query = "&".join(pair for pair in query.split("&") if pair and not scan.found_text(pair))
    if query:
        url += f"?{query}"
    return url[:2048]
