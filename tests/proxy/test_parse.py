"""The X-AS-* parser: strict targets, exact suffixes, and no crash on any input."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindkey.config.hosts import DEFAULT_PORTS, normalize_host
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.parse import Injection, ProxySpec, Target, parse_spec, parse_target


def spec(*headers: tuple[str, str], method: str = "GET") -> ProxySpec:
    return parse_spec(method, list(headers))


TARGET = ("X-AS-Target-URL", "https://api.github.com/user?x=1")
BEARER = ("X-AS-Inject-Bearer", "GITHUB_TOKEN")


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "path"),
    [
        ("https://api.github.com/user", "https", "api.github.com", 443, "/user"),
        ("HTTPS://API.GitHub.COM./user", "https", "api.github.com", 443, "/user"),
        ("http://api.github.com", "http", "api.github.com", 80, "/"),
        ("https://api.github.com:8443/a?b=c#frag", "https", "api.github.com", 8443, "/a?b=c"),
        ("http://[::1]:9000/x", "http", "::1", 9000, "/x"),
        ("https://bücher.example/", "https", "xn--bcher-kva.example", 443, "/"),
        ("http://127.0.0.1:9000/p%20q", "http", "127.0.0.1", 9000, "/p%20q"),
    ],
)
def test_targets(url: str, scheme: str, host: str, port: int, path: str) -> None:
    target = parse_target(url)
    assert (target.scheme, target.host, target.port, target.path_query) == (
        scheme,
        host,
        port,
        path,
    )


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/relative",
        "api.github.com/user",
        "//api.github.com/x",
        "ftp://h/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "https://api.github.com@evil.com/",
        "https://user:pw@api.github.com/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://017700000001/",
        "http://127.1/",
        "https://api.github.com\r\nX-Evil: 1/",
        "https://api github.com/",
        "https://:443/",
        "https://api.github.com:0/",
        "https://api.github.com:65536/",
        "https://api.github.com:https/",
        "http://[::1/",
        "https://api.github.com\\@evil.com/",
        "https://-bad-.example/",
        "http://[fe80::1%25eth0]/",  # an IPv6 zone names an interface, not a host
        "http://api%2egithub.com/",
    ],
)
def test_bad_targets(url: str) -> None:
    with pytest.raises(ProxyError) as info:
        parse_target(url)
    assert info.value.code == "bad_request"


def test_suffix_case_is_kept_and_styles_parsed() -> None:
    parsed = spec(
        TARGET,
        ("x-as-inject-header-X-Api-KEY", "A"),
        ("X-AS-INJECT-QUERY-apiKey", "B"),
        ("X-As-Inject-Body-data.Auth.token", "C"),
        ("X-AS-Inject-Basic", "D"),
    )
    assert parsed.injections == (
        Injection("header", "X-Api-KEY", "A"),
        Injection("query", "apiKey", "B"),
        Injection("body", "data.Auth.token", "C"),
        Injection("basic", "", "D"),
    )
    assert parsed.secret_names == ["A", "B", "C", "D"]


def test_method_override() -> None:
    assert spec(TARGET, BEARER, ("X-AS-Method", "patch"), method="POST").method == "PATCH"
    assert spec(TARGET, BEARER, method="PUT").method == "PUT"


@pytest.mark.parametrize(
    "headers",
    [
        [TARGET],
        [BEARER],
        [TARGET, ("X-AS-Inject-Bearer", "BAD NAME")],
        [TARGET, ("X-AS-Inject-Bearer", "1STARTS_WITH_DIGIT")],
        [TARGET, ("X-AS-Inject-Bearer", "A" * 129)],
        [TARGET, ("X-AS-Inject-Header-", "GITHUB_TOKEN")],
        [TARGET, ("X-AS-Inject-Header-Host", "GITHUB_TOKEN")],
        [TARGET, ("X-AS-Inject-Header-Content-Length", "GITHUB_TOKEN")],
        [TARGET, ("X-AS-Inject-Header-Bad Name", "GITHUB_TOKEN")],
        [TARGET, ("X-AS-Inject-Header-X-AS-Target-URL", "GITHUB_TOKEN")],
        [TARGET, ("X-AS-Inject-Body-a..b", "GITHUB_TOKEN")],
        [TARGET, ("X-AS-Inject-Cookie-sid", "GITHUB_TOKEN")],
        [TARGET, ("X-AS-Inject-Bearer", "A"), ("X-AS-Inject-Basic", "B")],
        [TARGET, ("X-AS-Inject-Bearer", "A"), ("X-AS-Inject-Header-authorization", "B")],
        [TARGET, ("X-AS-Inject-Body-a", "A"), ("X-AS-Inject-Form-b", "B")],
        [TARGET, ("X-AS-Inject-Query-k", "A"), ("X-AS-Inject-Query-k", "B")],
        [TARGET, TARGET, BEARER],
        [TARGET, BEARER, ("X-AS-Method", "CONNECT")],
        [TARGET, BEARER, ("X-AS-Method", "GET /evil HTTP/1.1")],
    ],
)
def test_malformed_requests(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ProxyError) as info:
        parse_spec("GET", headers)
    assert info.value.code == "bad_request"


header_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=60)
header_name = st.one_of(
    st.sampled_from(
        [
            "X-AS-Target-URL",
            "X-AS-Method",
            "X-AS-Agent-Token",
            "X-AS-Inject-Bearer",
            "X-AS-Inject-Basic",
            "X-AS-Inject-Header-",
            "X-AS-Inject-Query-",
            "X-AS-Inject-Body-",
            "X-AS-Inject-Form-",
            "x-as-inject-",
        ]
    ),
    header_text,
).flatmap(
    lambda prefix: header_text.map(lambda tail: prefix + tail if prefix.endswith("-") else prefix)
)


@settings(max_examples=400, deadline=None)
@given(
    headers=st.lists(st.tuples(header_name, header_text), max_size=8),
    method=st.sampled_from(["GET", "POST", "X", ""]),
)
def test_fuzz_parser_only_ever_refuses_with_bad_request(
    headers: list[tuple[str, str]], method: str
) -> None:
    try:
        parsed = parse_spec(method, headers)
    except ProxyError as exc:
        assert exc.code == "bad_request"
        return
    # Whatever was accepted is well-formed.
    assert_well_formed(parsed.target)
    assert parsed.injections
    assert all("\r" not in i.key and "\n" not in i.key for i in parsed.injections)


# The target URL parser under fuzz: URLs assembled from hostile parts, and any text at all.

LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
label = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,9}(-[A-Za-z0-9]{1,5})?", fullmatch=True)
dns_name = st.lists(label, min_size=1, max_size=4).map(".".join)
hostile_host = st.one_of(
    dns_name,
    dns_name.map(lambda name: name + "."),
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3).map(".".join),  # IDN, junk
    st.ip_addresses(v=4).map(str),
    st.integers(0, 2**32 - 1).map(str),  # 2130706433: loopback in disguise
    st.ip_addresses(v=4).map(lambda a: ".".join(f"0{octet:o}" for octet in a.packed)),  # octal
    st.ip_addresses(v=4).map(lambda a: hex(int(a))),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=6).map(lambda a: f"[{a.exploded.upper()}]"),
    st.ip_addresses(v=6).map(str),  # unbracketed
    st.text(max_size=20),
)
hostile_port = st.one_of(
    st.none(),
    st.integers(-1, 70_000).map(str),
    st.integers(0, 65_535).map(lambda port: f"00{port}"),
    st.text(max_size=6),
)
hostile_url = st.builds(
    lambda scheme, userinfo, host, port, rest: (
        f"{scheme}://{userinfo}{host}{'' if port is None else ':' + port}{rest}"
    ),
    st.sampled_from(["http", "https", "HTTPS", "hTtP", "ftp", "", "http:/"]),
    st.sampled_from(["", "", "", "user@", "user:pw@", "@"]),
    hostile_host,
    hostile_port,
    st.one_of(st.just(""), st.text(max_size=30), st.text(max_size=30).map(lambda t: "/" + t)),
)


def assert_well_formed(target: Target) -> None:
    """An accepted target: http(s), a port in range, a host in its one normal spelling."""
    assert target.scheme in DEFAULT_PORTS
    assert 1 <= target.port <= 65535
    host = target.host
    assert normalize_host(host) == host
    assert host.isascii() and host == host.lower() and not host.endswith(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        assert all(LDH_LABEL.match(part) for part in host.split(".")), host
        assert not host.rsplit(".", 1)[-1].isdigit(), host  # never an IPv4 in disguise
    else:
        assert str(address) == host
    assert target.path_query.startswith("/")
    # The normal form reads back as the same target.
    again = parse_target(f"{target.scheme}://{target.host_header}{target.path_query}")
    assert (again.scheme, again.host, again.port, again.path_query) == (
        target.scheme,
        target.host,
        target.port,
        target.path_query,
    )


@settings(max_examples=500, deadline=None)
@given(url=st.one_of(hostile_url, st.text(max_size=60)))
def test_a_target_is_refused_with_bad_request_or_accepted_well_formed(url: str) -> None:
    try:
        target = parse_target(url)
    except ProxyError as exc:
        assert exc.code == "bad_request"
        return
    assert_well_formed(target)
    assert target.scheme == url.split(":", 1)[0].lower()


@settings(max_examples=300, deadline=None)
@given(
    url=hostile_url,
    extra=st.lists(st.tuples(header_name, header_text), max_size=4),
)
def test_spec_parser_reads_the_target_as_the_target_parser_does(
    url: str, extra: list[tuple[str, str]]
) -> None:
    # On the wire: the URL's UTF-8 bytes, which aiohttp hands over as latin-1 text.
    sent = url.encode("utf-8", "surrogatepass").decode("latin-1")
    headers = [("X-AS-Target-URL", sent), ("X-AS-Inject-Bearer", "GITHUB_TOKEN"), *extra]
    try:
        parsed = parse_spec("GET", headers)
    except ProxyError as exc:
        assert exc.code == "bad_request"
        return
    assert_well_formed(parsed.target)
    assert parsed.target == parse_target(url.strip())


@settings(max_examples=200, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "Https"]),
    host=st.one_of(
        dns_name.flatmap(lambda name: st.sampled_from([name, name + "."])),
        st.ip_addresses().map(lambda a: str(a) if a.version == 4 else f"[{a}]"),
    ),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=st.from_regex(r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){1,3}", fullmatch=True),
    query=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9=&%._-]{1,20}", fullmatch=True)),
)
def test_a_well_formed_url_is_accepted_as_written(
    scheme: str, host: str, port: int | None, path: str, query: str | None
) -> None:
    written = f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
    written += "" if query is None else f"?{query}"
    target = parse_target(written)
    assert target.scheme == scheme.lower()
    assert target.host == (
        str(ipaddress.ip_address(host.strip("[]")))
        if host[0] == "[" or host[0].isdigit()
        else host.lower().removesuffix(".")
    )
    assert target.port == (DEFAULT_PORTS[scheme.lower()] if port is None else port)
    assert target.path_query == (path if query is None else f"{path}?{query}")
    assert_well_formed(target)
