"""Which addresses may be dialled, in the style of smokescreen's table tests."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blindkey.config.hosts import AllowEntry, HostError
from blindkey.config.model import AllowlistSettings
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.egress import AllowIndex, EgressGuard, VettingResolver, is_public
from blindkey.proxy.request.parse import parse_target
from blindkey.proxy.upstream import BlockedAddressError

BLOCKED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "198.18.0.1",
    "198.19.255.255",
    "240.0.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fd00:ec2::254",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::",
    "2002:c0a8:101::1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1
]
PUBLIC = [
    "8.8.8.8",
    "140.82.112.6",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "64:ff9b::808:808",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", BLOCKED)
def test_blocked(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def guard(*entries: str, private: tuple[str, ...] = (), own_port: int | None = None) -> EgressGuard:
    settings = AllowlistSettings(
        entries=tuple(AllowEntry.parse(e) for e in entries),
        private_ranges=tuple(ipaddress.ip_network(n) for n in private),
    )
    return EgressGuard(settings, own_port=own_port)


@pytest.mark.parametrize(
    ("entries", "url", "allowed"),
    [
        (("api.github.com",), "https://api.github.com/x", True),
        (("api.github.com",), "https://API.GITHUB.COM./x", True),
        (("api.github.com",), "http://api.github.com/x", False),
        (("api.github.com",), "https://api.github.com:8443/x", False),
        (("api.github.com:8443",), "https://api.github.com:8443/x", True),
        (("*.stripe.com",), "https://api.stripe.com/x", True),
        (("*.stripe.com",), "https://stripe.com/x", False),
        (("*.stripe.com",), "https://evilstripe.com/x", False),
        (("*.stripe.com",), "https://api.stripe.com.evil.com/x", False),
        (("http://127.0.0.1:9000",), "http://127.0.0.1:9000/x", True),
        (("http://127.0.0.1:9000",), "https://127.0.0.1:9000/x", False),
        (("http://127.0.0.1:9000",), "http://127.0.0.2:9000/x", False),
        (("http://[::1]:9000",), "http://[::1]:9000/x", True),
        (("bücher.example",), "https://xn--bcher-kva.example/", True),
        (("xn--bcher-kva.example",), "https://bücher.example/", True),
    ],
)
def test_allowlist_matching(entries: tuple[str, ...], url: str, allowed: bool) -> None:
    target = parse_target(url)
    if allowed:
        guard(*entries).check(target)
    else:
        with pytest.raises(ProxyError) as info:
            guard(*entries).check(target)
        assert info.value.code == "host_not_allowed"


def test_the_proxy_will_not_call_itself() -> None:
    with pytest.raises(ProxyError) as info:
        guard("http://127.0.0.1:8765", own_port=8765).check(
            parse_target("http://127.0.0.1:8765/proxy")
        )
    assert info.value.code == "blocked_address"


def test_private_ranges_admit_only_what_they_name() -> None:
    g = guard(private=("10.1.0.0/16",))
    assert g.address_allowed(ipaddress.ip_address("10.1.2.3"))
    assert not g.address_allowed(ipaddress.ip_address("10.2.0.1"))
    assert not g.address_allowed(ipaddress.ip_address("127.0.0.1"))


async def test_resolver_refuses_a_name_that_resolves_to_loopback() -> None:
    resolver = VettingResolver(guard())
    try:
        with pytest.raises(BlockedAddressError):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


async def test_resolver_returns_only_vetted_addresses() -> None:
    resolver = VettingResolver(guard(private=("127.0.0.0/8",)))
    try:
        results = await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    assert results and all(ipaddress.ip_address(r["host"]).is_loopback for r in results)


@pytest.mark.parametrize(
    ("url", "entry"),
    [
        ("https://api.example.com/x", "api.example.com"),
        ("https://api.example.com:8443/", "api.example.com:8443"),
        ("http://127.0.0.1:9000/echo", "http://127.0.0.1:9000"),
        ("http://example.com/", "http://example.com"),
        ("https://[2001:db8::1]:444/", "[2001:db8::1]:444"),
    ],
)
def test_a_refusal_names_the_entry_that_would_allow_it(url: str, entry: str) -> None:
    """The message carries the exact entry; added, that entry admits the call."""
    target = parse_target(url)
    with pytest.raises(ProxyError) as info:
        guard("other.example").check(target)
    assert f"`blindkey allowlist add {entry}`" in info.value.message
    assert guard(entry).check(target).text == entry


_LABELS = st.sampled_from(["a", "b", "api", "example", "com", "xn--bcher-kva", "stripe"])
_HOSTS = st.lists(_LABELS, min_size=1, max_size=4).map(".".join)
_ENTRIES = st.tuples(
    st.sampled_from(["", "http://"]),
    st.booleans(),
    _HOSTS.filter(lambda h: "." in h),  # a wildcard over a single label is refused anyway
    st.sampled_from([None, 443, 8443]),
)


def _entry(scheme: str, wildcard: bool, host: str, port: int | None) -> AllowEntry | None:
    text = f"{scheme}{'*.' if wildcard else ''}{host}{'' if port is None else f':{port}'}"
    try:
        return AllowEntry.parse(text)
    except HostError:  # a public suffix under a wildcard
        return None


@pytest.mark.parametrize(
    ("entries", "url", "first"),
    [
        (("*.example.com", "api.example.com"), "https://api.example.com/", "*.example.com"),
        (("api.example.com", "*.example.com"), "https://api.example.com/", "api.example.com"),
        (("*.example.com", "*.api.example.com"), "https://x.api.example.com/", "*.example.com"),
        (("*.api.example.com", "*.example.com"), "https://x.api.example.com/", "*.api.example.com"),
        (
            ("http://api.example.com", "api.example.com"),
            "https://api.example.com/",
            "api.example.com",
        ),
    ],
)
def test_the_first_matching_entry_in_file_order_is_the_rule(
    entries: tuple[str, ...], url: str, first: str
) -> None:
    assert guard(*entries).check(parse_target(url)).text == first


@given(
    st.lists(_ENTRIES, max_size=12),
    st.sampled_from(["http", "https"]),
    _HOSTS,
    st.sampled_from([80, 443, 8443]),
)
def test_the_index_finds_what_a_scan_in_order_finds(
    raw: list[tuple[str, bool, str, int | None]], scheme: str, host: str, port: int
) -> None:
    entries = tuple(e for e in (_entry(*r) for r in raw) if e is not None)
    scanned = next((e for e in entries if e.matches(scheme, host, port)), None)
    found = AllowIndex(entries).find(scheme, host, port)
    assert found is scanned
