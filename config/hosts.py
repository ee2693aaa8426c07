"""Host names and allowlist entries, normalised the one way every check uses."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

import idna
from publicsuffixlist import PublicSuffixList

DEFAULT_PORTS = {"http": 80, "https": 443}
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostError(ValueError):
    """A host or allowlist entry that blindkey refuses to interpret."""


@functools.lru_cache(maxsize=4096)  # pure, and called for every request's target
def normalize_host(raw: str) -> str:
    """Lowercase, drop one trailing dot, IDNA-encode; reject ambiguous numeric forms.

    IPv6 literals come back without brackets in their compressed form; IPv4 literals
    only in canonical dotted-quad form, since `2130706433` or `0x7f.1` are loopback in
    disguise to most resolvers.
    """
    host = raw.strip()
    if "%" in host:
        # An IPv6 zone (fe80::1%eth0) names an interface of this machine, not a host; it
        # would also reach the Host header as written.
        raise HostError(f"invalid host {raw!r}: a zone or percent-escape is not a host")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError as exc:
            raise HostError(f"invalid IPv6 literal {raw!r}") from exc
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise HostError("empty host")
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError as exc:
            raise HostError(f"invalid host {raw!r}") from exc
    lowered = host.lower()
    if _NUMERIC_LABEL.match(lowered.rsplit(".", 1)[-1]):
        return _canonical_ipv4(lowered, raw)
    try:
        encoded = idna.encode(lowered, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise HostError(f"invalid host name {raw!r}: {exc}") from exc
    # UTS 46 folds full-width digits and ideographic dots to ASCII, so check the result too.
    if _NUMERIC_LABEL.match(encoded.rsplit(".", 1)[-1]):
        return _canonical_ipv4(encoded, raw)
    if not all(_LABEL.match(label) for label in encoded.split(".")):
        raise HostError(f"invalid host name {raw!r}")
    return encoded


def _canonical_ipv4(host: str, raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError as exc:
        raise HostError(
            f"host {raw!r} is a non-canonical IPv4 address; write it as a.b.c.d"
        ) from exc


@functools.lru_cache(maxsize=4096)
def ip_literal(host: str) -> IPAddress | None:
    """The address a normalised host names, when it is an IP literal."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class HostPattern:
    """`api.github.com` or `*.stripe.com` (any subdomain, never the apex)."""

    host: str
    wildcard: bool

    @classmethod
    def parse(cls, raw: str) -> HostPattern:
        text = raw.strip()
        if text.startswith("*."):
            return cls(host=normalize_host(text[2:]), wildcard=True)
        if "*" in text:
            raise HostError(f"{raw!r}: a wildcard may only be a leading '*.'")
        return cls(host=normalize_host(text), wildcard=False)

    def matches(self, host: str) -> bool:
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def overlaps(self, other: HostPattern) -> bool:
        """Whether some host matches both patterns."""
        if self.wildcard and other.wildcard:
            return self.host == other.host or self.matches(other.host) or other.matches(self.host)
        if self.wildcard:
            return self.matches(other.host)
        return other.matches(self.host)

    def __str__(self) -> str:
        return f"*.{self.host}" if self.wildcard else self.host


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # Loading the list takes tens of milliseconds: only a wildcard entry pays for it.
    # ICANN and private suffixes alike: a name under github.io or s3.amazonaws.com belongs
    # to whoever registers it, just as one under .com does. A single label that is not on
    # the list (`*.internal`) counts as a public suffix too, as the list's own rules say.
    return PublicSuffixList()


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry: a scheme, a host pattern and a port, all exact."""

    scheme: str
    pattern: HostPattern
    port: int
    # Equal entries permit the same thing, however they were spelled.
    text: str = field(compare=False)

    @classmethod
    def binding(cls, raw: str) -> AllowEntry:
        """A secret's `hosts` entry: an allowlist entry, but a wildcard under a public suffix
        is accepted. A binding only narrows the allowlist, which refuses such a wildcard, so
        `*.githubusercontent.com` binds to the hosts of it that are allowlisted, no more."""
        return cls.parse(raw, any_suffix=True)

    @classmethod
    def parse(cls, raw: str, *, any_suffix: bool = False) -> AllowEntry:
        text = raw.strip()
        scheme = "https"
        rest = text
        if "://" in text:
            scheme, rest = text.split("://", 1)
            scheme = scheme.lower()
            if scheme not in DEFAULT_PORTS:
                raise HostError(f"{raw!r}: scheme must be http or https")
        if not rest or any(ch in rest for ch in "/?#@ \t\r\n"):
            raise HostError(f"{raw!r}: expected host, host:port or scheme://host[:port]")
        host_part, port = _split_port(rest, raw)
        pattern = HostPattern.parse(host_part)
        if pattern.wildcard and ip_literal(pattern.host) is not None:
            raise HostError(f"{raw!r}: a wildcard cannot cover an IP address")
        if pattern.wildcard and not any_suffix and _public_suffixes().is_public(pattern.host):
            raise HostError(
                f"{raw!r}: {pattern.host} is a public suffix, where anyone can register a "
                f"name; allowlist the hosts you mean, or *.DOMAIN.{pattern.host} for a domain "
                "you trust"
            )
        return cls(
            scheme=scheme,
            pattern=pattern,
            port=port if port is not None else DEFAULT_PORTS[scheme],
            text=text,
        )

    def matches(self, scheme: str, host: str, port: int) -> bool:
        return scheme == self.scheme and port == self.port and self.pattern.matches(host)

    def overlaps(self, other: AllowEntry) -> bool:
        """Whether some destination matches both entries."""
        return (
            self.scheme == other.scheme
            and self.port == other.port
            and self.pattern.overlaps(other.pattern)
        )

    def __str__(self) -> str:
        return entry_for(self.scheme, str(self.pattern), self.port)


def entry_for(scheme: str, host: str, port: int) -> str:
    """The shortest entry text that names exactly this scheme, host and port."""
    shown = f"[{host}]" if ":" in host else host
    if scheme == "https":
        return shown if port == DEFAULT_PORTS["https"] else f"{shown}:{port}"
    return f"{scheme}://{shown}" if port == DEFAULT_PORTS[scheme] else f"{scheme}://{shown}:{port}"


def origin(scheme: str, host: str, port: int) -> str:
    """scheme://host:port, the port always shown (what a grant from a request covers)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def _split_port(rest: str, raw: str) -> tuple[str, int | None]:
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise HostError(f"{raw!r}: unclosed '['")
        host, tail = rest[: close + 1], rest[close + 1 :]
        if not tail:
            return host, None
        if not tail.startswith(":"):
            raise HostError(f"{raw!r}: unexpected text after ']'")
        return host, parse_port(tail[1:], raw)
    if rest.count(":") == 1:
        host, port_text = rest.split(":")
        return host, parse_port(port_text, raw)
    return rest, None


def parse_port(text: str, raw: str) -> int:
    # isdigit() alone admits `²` and `٨٠`; a port is ASCII digits only.
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise HostError(f"{raw!r}: port must be a number from 1 to 65535")
    return int(text)
