"""Host normalisation and allowlist entries, table-driven with the nasty cases (smokescreen)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindkey.config.hosts import AllowEntry, HostError, HostPattern, normalize_host

T = TypeVar("T")

# (raw host, normalised form)
NORMALISED = [
    ("api.github.com", "api.github.com", "plain"),
    ("API.GitHub.COM", "api.github.com", "mixed-case"),
    ("api.github.com.", "api.github.com", "trailing-dot"),
    ("API.GITHUB.COM.", "api.github.com", "mixed-case-trailing-dot"),
    ("  api.github.com  ", "api.github.com", "surrounding-space"),
    ("bücher.example", "xn--bcher-kva.example", "idn"),
    ("BÜCHER.example", "xn--bcher-kva.example", "idn-uppercase"),
    ("bücher.example.", "xn--bcher-kva.example", "idn-trailing-dot"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", "punycode-input"),
    ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example", "punycode-uppercase"),
    ("\uff41\uff50\uff49.github.com", "api.github.com", "fullwidth-letters"),
    ("1e100.net", "1e100.net", "digits-in-label-not-ip"),
    ("127.0.0.1", "127.0.0.1", "ipv4-canonical"),
    ("127.0.0.1.", "127.0.0.1", "ipv4-trailing-dot"),
    ("10.1.2.3", "10.1.2.3", "ipv4-private"),
    ("::1", "::1", "ipv6-bare"),
    ("[::1]", "::1", "ipv6-bracketed"),
    ("[2001:DB8:0:0:0:0:0:1]", "2001:db8::1", "ipv6-compressed-lowercased"),
    ("2001:0db8::0001", "2001:db8::1", "ipv6-leading-zeros"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1", "ipv6-mapped-v4"),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[:2] for c in NORMALISED], ids=[c[2] for c in NORMALISED]
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


# Hosts blindkey refuses to interpret; the fragment must appear in the message.
REJECTED = [
    ("2130706433", "non-canonical IPv4", "decimal-ipv4"),
    ("0x7f.1", "non-canonical IPv4", "hex-short-ipv4"),
    ("0x7f000001", "non-canonical IPv4", "hex-ipv4"),
    ("017700000001", "non-canonical IPv4", "octal-ipv4"),
    ("0177.0.0.1", "non-canonical IPv4", "octal-first-octet"),
    ("010.0.0.1", "non-canonical IPv4", "leading-zero-octet"),
    ("127.0.0.01", "non-canonical IPv4", "leading-zero-last-octet"),
    ("127.1", "non-canonical IPv4", "short-ipv4"),
    ("1.2.3", "non-canonical IPv4", "three-part-ipv4"),
    ("256.1.1.1", "non-canonical IPv4", "octet-out-of-range"),
    ("example.123", "non-canonical IPv4", "numeric-tld"),
    # Full-width digits and ideographic dots fold to ASCII under UTS 46; the folded form
    # must face the same numeric check as ASCII input.
    ("\uff11\uff12\uff17.\uff11", "non-canonical IPv4", "fullwidth-short-ipv4"),
    ("127\u30021", "non-canonical IPv4", "ideographic-dot-short-ipv4"),
    (
        "\uff12\uff11\uff13\uff10\uff17\uff10\uff16\uff14\uff13\uff13",
        "non-canonical IPv4",
        "fullwidth-decimal-ipv4",
    ),
    ("", "empty host", "empty"),
    ("   ", "empty host", "blank"),
    (".", "empty host", "only-dot"),
    ("a..b", "invalid host name", "empty-label"),
    ("host..", "invalid host name", "two-trailing-dots"),
    ("-bad.example", "invalid host name", "leading-hyphen"),
    ("bad-.example", "invalid host name", "trailing-hyphen"),
    ("under_score.example", "invalid host name", "underscore"),
    ("exa mple.com", "invalid host name", "space"),
    ("xn--zz.example", "invalid host name", "bad-punycode"),
    ("a" * 64 + ".example", "invalid host name", "label-too-long"),
    ("[1.2.3.4]", "invalid IPv6 literal", "bracketed-ipv4"),
    ("[::1", "invalid host", "unclosed-bracket"),
    ("[not:an:ip]", "invalid IPv6 literal", "bracketed-garbage"),
    ("1.2.3.4:80", "invalid host", "host-with-port"),
    (":::", "invalid host", "colons"),
]


@pytest.mark.parametrize(
    ("raw", "fragment"), [c[:2] for c in REJECTED], ids=[c[2] for c in REJECTED]
)
def test_normalize_host_rejects(raw: str, fragment: str) -> None:
    with pytest.raises(HostError, match=fragment):
        normalize_host(raw)


def test_host_error_is_a_value_error() -> None:
    # Settings loading translates ValueError subclasses into ConfigError naming the key.
    assert issubclass(HostError, ValueError)


# (entry, scheme, pattern as printed, port)
ENTRIES = [
    ("api.github.com", "https", "api.github.com", 443, "host"),
    ("API.GitHub.com.", "https", "api.github.com", 443, "host-mixed-case-dot"),
    ("api.github.com:8443", "https", "api.github.com", 8443, "host-port"),
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000, "http-ip-port"),
    ("https://host:444", "https", "host", 444, "https-port"),
    ("http://host", "http", "host", 80, "http-default-port"),
    ("https://host", "https", "host", 443, "https-default-port"),
    ("HTTP://Host", "http", "host", 80, "scheme-case"),
    ("[::1]:8080", "https", "::1", 8080, "ipv6-port"),
    ("[::1]", "https", "::1", 443, "ipv6-bracketed"),
    ("::1", "https", "::1", 443, "ipv6-bare"),
    ("http://[::1]", "http", "::1", 80, "http-ipv6"),
    ("*.stripe.com", "https", "*.stripe.com", 443, "wildcard"),
    ("http://*.internal.example:81", "http", "*.internal.example", 81, "http-wildcard-port"),
    ("bücher.example", "https", "xn--bcher-kva.example", 443, "idn"),
    ("host:65535", "https", "host", 65535, "max-port"),
    ("host:1", "https", "host", 1, "min-port"),
    ("*.example.co.uk", "https", "*.example.co.uk", 443, "wildcard-under-suffix"),
    ("*.octocat.github.io", "https", "*.octocat.github.io", 443, "wildcard-under-private-suffix"),
    ("*.www.ck", "https", "*.www.ck", 443, "wildcard-on-suffix-exception"),
    ("co.uk", "https", "co.uk", 443, "exact-suffix-is-one-host"),
]


@pytest.mark.parametrize(
    ("raw", "scheme", "pattern", "port"), [c[:4] for c in ENTRIES], ids=[c[4] for c in ENTRIES]
)
def test_allow_entry_parse(raw: str, scheme: str, pattern: str, port: int) -> None:
    entry = AllowEntry.parse(raw)
    assert (entry.scheme, str(entry.pattern), entry.port) == (scheme, pattern, port)
    assert entry.text == raw.strip()


BAD_ENTRIES = [
    ("ftp://x", "scheme must be http or https", "ftp-scheme"),
    ("file://x", "scheme must be http or https", "file-scheme"),
    ("a/b", "expected host", "path"),
    ("https://host/", "expected host", "trailing-slash"),
    ("host?q", "expected host", "query"),
    ("host#f", "expected host", "fragment"),
    ("user@host", "expected host", "userinfo"),
    ("https://user:pw@host", "expected host", "userinfo-with-scheme"),
    ("https://", "expected host", "scheme-only"),
    ("", "expected host", "empty"),
    ("*.1.2.3.4", "wildcard cannot cover an IP", "wildcard-ipv4"),
    ("*.[::1]", "wildcard cannot cover an IP", "wildcard-ipv6"),
    ("host:0", "port must be a number from 1 to 65535", "port-zero"),
    ("host:99999", "port must be a number from 1 to 65535", "port-too-big"),
    ("host:65536", "port must be a number from 1 to 65535", "port-65536"),
    ("host:", "port must be a number", "port-empty"),
    ("host:-1", "port must be a number", "port-negative"),
    ("host:+80", "port must be a number", "port-plus"),
    ("host:http", "port must be a number", "port-name"),
    ("host:٨٠", "port must be a number", "port-arabic-indic-digits"),
    ("host:²", "port must be a number", "port-superscript-digit"),
    ("[::1]x", "unexpected text after", "text-after-bracket"),
    ("[::1]:0", "port must be a number", "ipv6-port-zero"),
    ("*foo.com", "wildcard may only be a leading", "wildcard-glued"),
    ("foo.*.com", "wildcard may only be a leading", "wildcard-middle"),
    ("*", "wildcard may only be a leading", "bare-star"),
    ("*.", "empty host", "wildcard-nothing"),
    ("2130706433", "non-canonical IPv4", "decimal-ip"),
    ("http://0x7f.1:9000", "non-canonical IPv4", "hex-ip-with-scheme"),
    ("host:1:2", "invalid host", "two-ports"),
    # A wildcard over a public suffix admits every site anyone registers under it.
    ("*.com", "com is a public suffix", "wildcard-tld"),
    ("*.co.uk", "co.uk is a public suffix", "wildcard-second-level-suffix"),
    ("*.CO.UK.", "co.uk is a public suffix", "wildcard-suffix-case-dot"),
    ("https://*.co.uk:8443", "co.uk is a public suffix", "wildcard-suffix-scheme-port"),
    ("*.рф", "xn--p1ai is a public suffix", "wildcard-idn-tld"),
    ("*.github.io", "github.io is a public suffix", "wildcard-private-suffix"),
    ("*.x.compute.amazonaws.com", "is a public suffix", "wildcard-suffix-by-wildcard-rule"),
    ("*.ck", "ck is a public suffix", "wildcard-tld-with-wildcard-rule"),
    ("*.internal", "internal is a public suffix", "wildcard-unlisted-single-label"),
]


@pytest.mark.parametrize(
    ("raw", "fragment"), [c[:2] for c in BAD_ENTRIES], ids=[c[2] for c in BAD_ENTRIES]
)
def test_allow_entry_rejects(raw: str, fragment: str) -> None:
    with pytest.raises(HostError, match=fragment):
        AllowEntry.parse(raw)


# (entry, target scheme, target host as received, target port, allowed?)
MATCHES = [
    ("*.stripe.com", "https", "api.stripe.com", 443, True, "wildcard-subdomain"),
    ("*.stripe.com", "https", "a.b.stripe.com", 443, True, "wildcard-deep-subdomain"),
    ("*.stripe.com", "https", "API.Stripe.COM.", 443, True, "wildcard-mixed-case-dot"),
    ("*.stripe.com", "https", "stripe.com", 443, False, "wildcard-not-apex"),
    ("*.stripe.com", "https", "evilstripe.com", 443, False, "wildcard-suffix-trick"),
    ("*.stripe.com", "https", "stripe.com.evil.example", 443, False, "wildcard-prefix-trick"),
    ("*.stripe.com", "http", "api.stripe.com", 443, False, "wildcard-wrong-scheme"),
    ("*.stripe.com", "https", "api.stripe.com", 8443, False, "wildcard-wrong-port"),
    ("api.github.com", "https", "api.github.com", 443, True, "exact"),
    ("api.github.com", "https", "API.GITHUB.COM.", 443, True, "exact-mixed-case-dot"),
    ("api.github.com", "https", "x.api.github.com", 443, False, "exact-not-subdomain"),
    ("api.github.com", "https", "github.com", 443, False, "exact-not-parent"),
    ("api.github.com", "http", "api.github.com", 443, False, "https-entry-not-http"),
    ("api.github.com", "http", "api.github.com", 80, False, "https-entry-not-http-80"),
    ("api.github.com", "https", "api.github.com", 8443, False, "default-port-only"),
    ("api.github.com:8443", "https", "api.github.com", 8443, True, "explicit-port"),
    ("api.github.com:8443", "https", "api.github.com", 443, False, "explicit-port-not-default"),
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000, True, "http-ip"),
    ("http://127.0.0.1:9000", "https", "127.0.0.1", 9000, False, "http-entry-not-https"),
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9001, False, "http-ip-wrong-port"),
    ("http://127.0.0.1:9000", "http", "127.0.0.2", 9000, False, "http-ip-other-ip"),
    ("http://host", "http", "host", 80, True, "http-default-port"),
    ("http://host", "https", "host", 443, False, "http-entry-not-https-443"),
    ("https://host:444", "https", "host", 444, True, "https-explicit-port"),
    ("https://host:444", "http", "host", 444, False, "https-explicit-not-http"),
    ("[::1]:8080", "https", "[::1]", 8080, True, "ipv6-bracketed-target"),
    ("[::1]:8080", "https", "0:0:0:0:0:0:0:1", 8080, True, "ipv6-long-form-target"),
    ("[::1]:8080", "https", "::2", 8080, False, "ipv6-other"),
    ("bücher.example", "https", "xn--bcher-kva.example", 443, True, "idn-entry-punycode-target"),
    ("xn--bcher-kva.example", "https", "BÜCHER.example", 443, True, "punycode-entry-idn-target"),
]


@pytest.mark.parametrize(
    ("raw", "scheme", "host", "port", "allowed"),
    [c[:5] for c in MATCHES],
    ids=[c[5] for c in MATCHES],
)
def test_allow_entry_matches(raw: str, scheme: str, host: str, port: int, allowed: bool) -> None:
    entry = AllowEntry.parse(raw)
    assert entry.matches(scheme, normalize_host(host), port) is allowed


def test_equal_entries_compare_equal_whatever_the_spelling() -> None:
    # `allowlist add` de-duplicates by value; spelling must not create a second entry.
    assert AllowEntry.parse("api.github.com").pattern == AllowEntry.parse("API.github.com.").pattern
    assert HostPattern.parse("*.Stripe.com") == HostPattern.parse("*.stripe.com.")
    assert HostPattern.parse("*.stripe.com") != HostPattern.parse("stripe.com")


# (pattern, pattern, some host matches both)
OVERLAPS = [
    ("api.github.com", "api.github.com", True, "same-host"),
    ("api.github.com", "API.GitHub.com.", True, "same-host-spelled-otherwise"),
    ("api.github.com", "github.com", False, "other-host"),
    ("*.stripe.com", "api.stripe.com", True, "wildcard-covers-host"),
    ("*.stripe.com", "stripe.com", False, "wildcard-not-apex"),
    ("*.stripe.com", "evilstripe.com", False, "wildcard-suffix-trick"),
    ("*.stripe.com", "*.stripe.com", True, "same-wildcard"),
    ("*.stripe.com", "*.eu.stripe.com", True, "wildcard-under-wildcard"),
    ("*.stripe.com", "*.stripe.org", False, "unrelated-wildcards"),
    ("*.a.stripe.com", "*.b.stripe.com", False, "sibling-wildcards"),
    ("127.0.0.1", "127.0.0.1", True, "ip"),
]


@pytest.mark.parametrize(
    ("left", "right", "expected"), [c[:3] for c in OVERLAPS], ids=[c[3] for c in OVERLAPS]
)
def test_host_pattern_overlaps_is_symmetric(left: str, right: str, expected: bool) -> None:
    a, b = HostPattern.parse(left), HostPattern.parse(right)
    assert a.overlaps(b) is expected
    assert b.overlaps(a) is expected


# --- properties: whatever is typed, a parse ends in an entry or a HostError -----------------

LABEL = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-üßÖ\uff41",
    min_size=1,
    max_size=12,
)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
HOST = st.one_of(
    NAME,
    NAME.map(lambda name: name + "."),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
    st.ip_addresses(v=6).map(str),
    st.integers(min_value=0, max_value=2**32).map(str),
)
PORT = st.one_of(st.just(""), st.integers(min_value=-1, max_value=70_000).map(lambda p: f":{p}"))
SCHEME = st.sampled_from(["", "", "http://", "https://", "HTTPS://", "ftp://"])
# Entries shaped like what people type, and text that is not.
TYPED = st.builds(
    lambda scheme, star, host, port: f"{scheme}{star}{host}{port}",
    SCHEME,
    st.sampled_from(["", "", "*.", "*"]),
    HOST,
    PORT,
)
# Separators, full-width and ideographic dots, digits that are not ASCII, an emoji.
NOISE = st.text(
    st.sampled_from("ab1-.:*[]/@?# \t\u00fc\uff0e\u3002\u0662\u00b2\U0001f511"), max_size=24
)
ANY_TEXT = st.one_of(TYPED, NOISE, st.text(max_size=24))


def _parsed_or_refused(parse: Callable[[str], T], raw: str) -> T | None:
    try:
        return parse(raw)
    except HostError:
        return None


def _canonical(entry: AllowEntry) -> str:
    host = str(entry.pattern)
    if ":" in host:
        host = f"[{host}]"
    return f"{entry.scheme}://{host}:{entry.port}"


@settings(max_examples=400, deadline=None)  # the first wildcard loads the suffix list
@given(ANY_TEXT)
def test_an_allow_entry_parses_or_is_a_host_error_and_parses_again_the_same(raw: str) -> None:
    entry = _parsed_or_refused(AllowEntry.parse, raw)
    if entry is None:
        return
    assert AllowEntry.parse(entry.text) == entry
    # Its normal form too, as `allowlist list` could print it.
    assert AllowEntry.parse(_canonical(entry)) == entry
    # And the shortest form str() gives (what `secrets list` shows of a binding).
    assert AllowEntry.parse(str(entry)) == entry
    host = entry.pattern.host
    assert entry.matches(entry.scheme, "x." + host if entry.pattern.wildcard else host, entry.port)


@settings(max_examples=400, deadline=None)  # the first wildcard loads the suffix list
@given(ANY_TEXT)
def test_a_host_pattern_parses_or_is_a_host_error_and_parses_again_the_same(raw: str) -> None:
    pattern = _parsed_or_refused(HostPattern.parse, raw)
    if pattern is None:
        return
    assert HostPattern.parse(str(pattern)) == pattern
    assert normalize_host(pattern.host) == pattern.host
    assert pattern.overlaps(pattern)


# A secret's binding means what an allowlist entry means: (binding, scheme, host, port, ok)
BINDINGS = [
    ("api.github.com", "https", "api.github.com", 443, True),
    ("api.github.com", "http", "api.github.com", 80, False),
    ("api.github.com", "https", "api.github.com", 8443, False),
    ("api.github.com:8443", "https", "api.github.com", 8443, True),
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000, True),
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9001, False),
    ("http://127.0.0.1:9000", "https", "127.0.0.1", 9000, False),
    ("*.githubusercontent.com", "https", "raw.githubusercontent.com", 443, True),
    ("*.githubusercontent.com", "http", "raw.githubusercontent.com", 80, False),
]


@pytest.mark.parametrize(("binding", "scheme", "host", "port", "ok"), BINDINGS)
def test_a_binding_names_scheme_host_and_port(
    binding: str, scheme: str, host: str, port: int, ok: bool
) -> None:
    assert AllowEntry.binding(binding).matches(scheme, host, port) is ok


def test_a_binding_may_be_a_wildcard_under_a_public_suffix() -> None:
    # It only narrows the allowlist, which refuses such a wildcard itself.
    with pytest.raises(HostError, match="public suffix"):
        AllowEntry.parse("*.githubusercontent.com")
    assert str(AllowEntry.binding("*.githubusercontent.com")) == "*.githubusercontent.com"
