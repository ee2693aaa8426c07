"""The X-AS-* parser: strict targets, exact suffixes, and no crash on any input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindkey.proxy.errors import ProxyError
from blindkey.proxy.parse import Injection, parse_spec, parse_target


def spec(*headers: tuple[str, str], method: str = "GET"):  # type: ignore[no-untyped-def]
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
    assert parsed.target.scheme in ("http", "https")
    assert parsed.injections
    assert all("\r" not in i.key and "\n" not in i.key for i in parsed.injections)
