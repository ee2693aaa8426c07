"""Inject: the request that goes upstream, with secret values where the agent asked them
(headers, query, JSON body, form) and nothing of the caller's that must not go on."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from aiohttp import web
from multidict import CIMultiDict

from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.parse import HOP_BY_HOP, PREFIX, Injection
from blindkey.proxy.request.token_scan import TokenScan
from blindkey.proxy.upstream.decoding import DECODABLE

_UNSAFE_IN_HEADER = ("\r", "\n", "\0")


def _as_header_text(text: str) -> str:
    """Header values go out as UTF-8 bytes (the upstream writer encodes Latin-1, one byte
    per character, so the UTF-8 bytes are carried as the characters of those bytes).

    RFC 9110 allows only visible ASCII in practice; a value outside it is sent as UTF-8,
    which APIs that accept non-ASCII keys expect, and the redactor knows that form.
    """
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


def inject_headers(
    headers: CIMultiDict[str], injections: Sequence[Injection], values: Mapping[str, str]
) -> None:
    for injection in injections:
        value = values[injection.secret]
        if injection.style == "bearer":
            name, text = "Authorization", f"Bearer {value}"
        elif injection.style == "basic":
            encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
            name, text = "Authorization", f"Basic {encoded}"
        elif injection.style == "header":
            name, text = injection.key, value
        else:
            continue
        if any(ch in text for ch in _UNSAFE_IN_HEADER):
            raise ProxyError(
                "bad_request",
                f"secret {injection.secret} contains a line break and cannot be sent in a header",
            )
        headers.popall(name, None)
        headers[name] = _as_header_text(text)


def _replace_params(query: str, updates: Mapping[str, str]) -> str:
    """Replace or append parameters; untouched pairs keep their exact encoding."""
    kept = (
        [
            pair
            for pair in query.split("&")
            if pair
            and parse_qsl(pair, keep_blank_values=True)
            and parse_qsl(pair, keep_blank_values=True)[0][0] not in updates
        ]
        if query
        else []
    )
    added = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in updates.items()]
    return "&".join([*kept, *added])


def inject_query(
    path_query: str, injections: Sequence[Injection], values: Mapping[str, str]
) -> tuple[str, str]:
    """(path and query to send, the same with `{NAME}` in place of each value, for audit)."""
    queries = [i for i in injections if i.style == "query"]
    if not queries:
        return path_query, path_query
    path, _, query = path_query.partition("?")
    real = _replace_params(query, {i.key: values[i.secret] for i in queries})
    shown = _replace_params(query, {i.key: "\0" + i.secret for i in queries})
    for injection in queries:
        shown = shown.replace(quote("\0" + injection.secret, safe=""), "{" + injection.secret + "}")
    return f"{path}?{real}", f"{path}?{shown}"


def _set_path(document: dict[str, Any], path: str, value: str) -> None:
    parts = path.split(".")
    node = document
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ProxyError("bad_request", f"body path {path!r}: {part!r} is not an object")
        node = child
    node[parts[-1]] = value


def inject_body(
    body: bytes, content_type: str, injections: Sequence[Injection], values: Mapping[str, str]
) -> tuple[bytes, str]:
    """The new body and its content type, for Body-* (JSON) or Form-* injections."""
    fields = [i for i in injections if i.style in ("body", "form")]
    if not fields:
        return body, content_type
    if fields[0].style == "body":
        try:
            document = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise ProxyError("bad_request", "Body-* injection needs a JSON request body") from exc
        if not isinstance(document, dict):
            raise ProxyError("bad_request", "Body-* injection needs a JSON object body")
        for injection in fields:
            _set_path(document, injection.key, values[injection.secret])
        return orjson.dumps(document), "application/json"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProxyError("bad_request", "Form-* injection needs a UTF-8 urlencoded body") from exc
    updates = {i.key: values[i.secret] for i in fields}
    pairs = [(k, v) for k, v in parse_qsl(text, keep_blank_values=True) if k not in updates]
    pairs.extend(updates.items())
    return urlencode(pairs).encode("ascii"), "application/x-www-form-urlencoded"


# Expect: the proxy itself answered 100-continue to the agent.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "origin", "expect"}
# A part of an answer can be a slice of a stored value shorter than anything the redactor
# recognises: asked for only where every secret of the call allows it ([secrets] allow_range).
# Request-Range is the name older servers (Apache) still honour.
RANGE_HEADERS = frozenset({"range", "if-range", "request-range"})
CHUNK = 2**16


def upstream_headers(
    request: web.BaseRequest, raw: list[tuple[str, str]], *, allow_range: bool = False
) -> CIMultiDict[str]:
    listed = {
        token.strip().lower()
        for value in request.headers.getall("Connection", [])
        for token in value.split(",")
    }
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in raw:
        lowered = name.lower()
        if lowered in _NOT_FORWARDED or lowered in listed or lowered.startswith(PREFIX):
            continue
        if lowered in RANGE_HEADERS and not allow_range:
            continue
        headers.add(name, value)
    headers["Accept-Encoding"] = ", ".join(DECODABLE)
    return headers


async def read_limited(request: web.BaseRequest, limit: int, deadline: float) -> bytes:
    """The whole body, for Body-*/Form-* injection: bounded in size and in time."""
    if request.content_length is not None and request.content_length > limit:
        raise ProxyError(
            "body_too_large",
            f"request body exceeds the {limit}-byte limit for Body-*/Form-* injection",
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise ProxyError(
                        "body_too_large",
                        f"request body exceeds the {limit}-byte limit for Body-*/Form-* injection",
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ProxyError(
            "bad_request",
            f"the request body did not arrive within {deadline:g}s ([limits] body_read_timeout)",
            close=True,
        ) from None
    return b"".join(chunks)


class CountingBody:
    """Streams the agent's body upstream while counting it for the audit record; on a route,
    through the token scan, whose refusal is kept for the answer (the upstream client only
    sees the body fail)."""

    def __init__(self, request: web.BaseRequest, scan: TokenScan | None = None) -> None:
        self.request = request
        self.scan = scan
        self.size = 0
        self.refusal: ProxyError | None = None

    async def _read(self) -> AsyncIterator[bytes]:
        async for chunk in self.request.content.iter_chunked(CHUNK):
            self.size += len(chunk)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._read() if self.scan is None else self.scan.guard(self._read())
        try:
            async for chunk in chunks:
                yield chunk
        except ProxyError as exc:
            self.refusal = exc
            raise
