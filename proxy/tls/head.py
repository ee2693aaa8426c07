"""The head of a `CONNECT host:port` request, read strictly: proxy mode's door.

aiohttp never sees a CONNECT: its parser would hand the bytes after the head to the
request as a body. The head is read here (request line, headers, nothing more), and the
connection then belongs to the tunnel or to the TLS blindkey answers itself.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from blindkey.config.hosts import HostError, normalize_host, parse_port
from blindkey.proxy.errors import ProxyError

PREFIX = b"CONNECT "
END = b"\r\n\r\n"
HEAD_LIMIT = 16 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


def is_connect(data: bytes) -> bool | None:
    """True when the first bytes of a connection are a CONNECT, False when they are not,
    None while too few have come to say."""
    if len(data) >= len(PREFIX):
        return data.startswith(PREFIX)
    return None if PREFIX.startswith(data) else False


@dataclass(frozen=True)
class ConnectHead:
    host: str  # normalised as the allowlist reads hosts
    port: int
    authority: str  # as the client wrote it (for the record)
    headers: CIMultiDictProxy[str]

    @property
    def token(self) -> str | None:
        return proxy_token(self.headers.getall("Proxy-Authorization", []))


def proxy_token(values: list[str]) -> str | None:
    """The agent token from `Proxy-Authorization: Basic base64(ANY:TOKEN)` (one header)."""
    if len(values) != 1:
        return None
    scheme, _, encoded = values[0].strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, token = decoded.partition(":")
    return token if colon and token else None


def no_token() -> ProxyError:
    return ProxyError(
        "unauthenticated",
        "proxy mode needs the agent's token: Proxy-Authorization: Basic base64(agent:TOKEN), "
        "as HTTPS_PROXY=http://agent:TOKEN@host:port sends it",
        proxy_auth=True,
    )


def _bad(message: str) -> ProxyError:
    return ProxyError("bad_request", message, close=True)


def head_end(buffer: bytes) -> int | None:
    """Where the head ends (just past its blank line); None while it has not come yet. A
    head longer than HEAD_LIMIT is refused."""
    end = buffer.find(END, 0, HEAD_LIMIT + len(END))
    if end >= 0:
        return end + len(END)
    if len(buffer) > HEAD_LIMIT:
        raise _bad(f"the CONNECT head is longer than {HEAD_LIMIT} bytes")
    return None


def parse_head(raw: bytes) -> ConnectHead:
    lines = raw[: -len(END)].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"CONNECT" or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _bad("expected `CONNECT host:port HTTP/1.1`")
    authority = parts[1].decode("latin-1")
    host, port = _authority(authority)
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _bad("a header line of the CONNECT request is malformed")
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            raise _bad(f"the {name.decode()} header holds a control character")
        headers.add(name.decode("ascii"), value.decode("latin-1"))
    return ConnectHead(host, port, authority, CIMultiDictProxy(headers))


def _authority(authority: str) -> tuple[str, int]:
    """`host:port` (RFC 9110 authority-form: the port is required), `[v6]:port` too."""
    if authority.startswith("["):
        close = authority.find("]")
        host, rest = authority[1:close], authority[close + 1 :]
        if close < 0 or not rest.startswith(":"):
            raise _bad("CONNECT names `[address]:port`")
        port_text = rest[1:]
    else:
        host, colon, port_text = authority.rpartition(":")
        if not colon or not host or ":" in host:
            raise _bad("CONNECT names `host:port`")
    try:
        return normalize_host(host), parse_port(port_text, authority)
    except HostError as exc:
        raise _bad(f"CONNECT {authority}: {exc}") from None
