"""What each call pays only when it uses a feature (issue 22's bench against 37a2d26): SigV4's
checks need AWS keys bound to the call, an answer's head is scanned once when it holds no
value, and one pass over the answer's headers serves both the part refusal and the usage
meter. Each shortcut is checked to decide exactly as the full path it skips would."""

from __future__ import annotations

import asyncio
import base64
import tomllib
from pathlib import Path

import orjson
import pytest

from blindkey.config.loader import parse_settings
from blindkey.config.secrets_table import DEFAULT_POLICY
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.authorise import Grant
from blindkey.proxy.request.parse import parse_spec
from blindkey.proxy.request.relay import _nothing_in
from blindkey.proxy.request.usage import meter_for
from blindkey.proxy.upstream.connection import UpstreamConnection
from blindkey.proxy.upstream.response import UpstreamLimits, UpstreamResponse
from blindkey.redact.forms import encodings
from blindkey.redact.redactor import Redactor
from blindkey.redact.views import active_views

VALUE = "ghp_headerValueNobodyMaySee0123456789"
SPACED = "correct horse battery staple 0123456789"
KEYS = {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDEN"}
AWS = orjson.dumps(KEYS).decode()
HEAD = ["OK", "Content-Type", "X-Request-Id", "application/json", "req_8d1c2f"]


def test_grant_tells_its_aws_values_apart_once() -> None:
    grant = Grant("a", "development", {"GH": VALUE, "AWS": AWS}, Redactor({}))
    assert grant.aws == frozenset({"AWS"})
    assert grant.aws is grant.aws  # worked out on first use, then kept with the grant
    assert Grant("a", "development", {"GH": VALUE}, Redactor({})).aws == frozenset()


def test_only_a_sigv4_injection_makes_a_spec_sign() -> None:
    target = ("X-AS-Target-URL", "https://sts.amazonaws.com/")
    signing = parse_spec("GET", [target, ("X-AS-Inject-Sigv4", "AWS")])
    bearer = parse_spec("GET", [target, ("X-AS-Inject-Bearer", "GH")])
    assert signing.signs and not bearer.signs


def test_an_ordinary_head_is_one_scan_with_no_view() -> None:
    # redact_texts joins with a line break, which the line-break view scans a second time.
    assert active_views("\n".join(HEAD).encode())
    assert active_views(" ".join(HEAD).encode()) == ()
    assert _nothing_in(Redactor({"GH": VALUE}), HEAD)


@pytest.mark.parametrize(
    "texts",
    [
        [*HEAD, VALUE],
        ["OK", "Location", f"https://example.com/?t={VALUE.replace('_', '%5F')}"],
        ["OK", "X-Echo", VALUE.replace("_", "\\u005f")],
        ["OK", "X-A", "X-B", "correct horse", "battery staple 0123456789"],  # across the joint
    ],
    ids=["plain", "percent-encoded", "json-escaped", "across-two-texts"],
)
def test_a_head_holding_a_value_takes_the_full_path(texts: list[str]) -> None:
    redactor = Redactor({"GH": VALUE, "SPACED": SPACED})
    assert not _nothing_in(redactor, texts)


def test_a_non_ascii_head_takes_the_full_path() -> None:
    # Latin-1 header bytes may hold a UTF-8 value: redact_texts looks at both spellings.
    assert not _nothing_in(Redactor({"GH": VALUE}), ["OK", "X-Name", "caf\xe9"])


@pytest.mark.parametrize(
    ("head", "found"),
    [
        ("HTTP/1.1 200 OK\r\nContent-Type: a/json\r\nContent-Length: 2", ("a/json", False)),
        ("HTTP/1.1 200 OK\r\ncontent-range: bytes 0-1/9\r\nCONTENT-TYPE: text/plain",
         ("text/plain", True)),
        ("HTTP/1.1 200 OK\r\nContent-Type: text/x-a\r\nContent-Type: x/y", ("text/x-a", False)),
        ("HTTP/1.1 200 OK\r\nX-Content-Type: a/b\r\nContent-Ranges: x", (None, False)),
        ("HTTP/1.1 103 Early Hints\r\nContent-Type: x/interim\r\nContent-Range: x\r\n\r\n"
         "HTTP/1.1 200 OK\r\nContent-Type: a/json", ("a/json", False)),
    ],
)  # fmt: skip
async def test_the_framing_pass_finds_the_content_type_and_any_range(
    head: str, found: tuple[str | None, bool]
) -> None:
    """The answer's first Content-Type (for the usage meter) and any Content-Range (a part)
    come out of the pass over its headers that finds its framing: no pass of their own,
    and an interim answer's headers are not the answer's."""
    loop = asyncio.get_running_loop()
    connection = UpstreamConnection(("http", "example.com", 80), loop, print, print)
    limits = UpstreamLimits(connect_timeout=1, read_timeout=1, total_timeout=1, max_field=8192)
    response = connection.response = UpstreamResponse(connection, "GET", limits, loop.time() + 1)
    connection.data_received(f"{head}\r\n\r\n".encode())
    assert response.headers_done
    assert (response.content_type, response.content_range) == found


def test_the_meter_is_made_for_json_and_sse_successes_only() -> None:
    assert meter_for(200, "application/json; charset=utf-8") is not None
    assert meter_for(200, "Text/Event-Stream") is not None
    assert meter_for(200, "text/html") is None
    assert meter_for(200, None) is None
    assert meter_for(404, "application/json") is None


def _spellings(value: str) -> list[bytes]:
    """The value as an answer's body may carry it: every form the redactor knows, and the
    spellings its views undo (escaped, percent-encoded, base64 in lines, UTF-16)."""
    raw = value.encode()
    b64 = base64.b64encode(raw)
    return [
        *sorted(encodings(value)),
        "".join(f"\\u{ord(c):04x}" for c in value).encode(),
        "".join(f"%{b:02X}" for b in raw).encode(),
        b"\\n".join(b64[i : i + 8] for i in range(0, len(b64), 8)),
        b"\r\n".join(b64[i : i + 8] for i in range(0, len(b64), 8)),
        value.encode("utf-16-le"),
    ]


@pytest.mark.parametrize("where", ["alone", "first", "last", "in json"])
def test_a_small_answer_is_clean_only_when_its_body_is(where: str) -> None:
    """The head and a small body share one scan: for every spelling of a value the body's
    own scan finds, the shared scan must say "not clean" too (and then each is redacted on
    its own, as before)."""
    redactor = Redactor({"GH": VALUE, "SPACED": SPACED})
    found = 0
    for spelling in _spellings(VALUE) + _spellings(SPACED):
        body = {
            "alone": spelling,
            "first": spelling + b'", "n": 1}',
            "last": b'{"token": "' + spelling,
            "in json": b'{"a": "x\\\\", "token": "' + spelling + b'", "b": "%"}',
        }[where]
        if redactor.redact(body)[1]:
            found += 1
            assert not _nothing_in(redactor, HEAD, body), spelling
    assert found >= 40  # the body's own scan finds (nearly) every spelling: none is vacuous
    assert _nothing_in(redactor, HEAD, b'{"id": 1, "note": "no value \\u0041 %41 here"}')


def test_the_same_headers_make_one_spec_and_a_refusal_is_never_kept() -> None:
    headers = [("X-AS-Target-URL", "https://api.github.com/user"), ("X-AS-Inject-Bearer", "GH")]
    first = parse_spec("GET", [("Accept", "*/*"), *headers, ("X-AS-Agent-Token", "t1")])
    again = parse_spec("GET", [*headers, ("X-AS-Agent-Token", "t1"), ("User-Agent", "x")])
    other = parse_spec("GET", [*headers, ("X-AS-Agent-Token", "t2")])
    assert again is first and other is not first and other.token == "t2"
    assert first.secret_names == ["GH"] and first.styles == ["bearer"]
    assert parse_spec("POST", [*headers]).method == "POST"
    twice = [*headers, ("X-AS-Inject-Bearer", "OTHER")]
    for _ in range(2):  # a refusal raises each time: nothing of it is kept
        with pytest.raises(ProxyError, match="same place"):
            parse_spec("GET", twice)


def test_the_parts_and_short_sets_decide_as_each_policy_would() -> None:
    text = (
        "[secrets.RANGED]\nallow_range = true\n[secrets.SHORT]\nallow_short = true\n"
        "[secrets.PLAIN]\nhosts = []\n"
    )
    settings = parse_settings(Path("config.toml"), tomllib.loads(text))
    names = ["RANGED", "SHORT", "PLAIN", "NO_TABLE"]
    assert settings.range_allowed == {n for n in names if settings.policy(n).allow_range}
    assert settings.short_allowed == {n for n in names if settings.policy(n).allow_short}
    assert settings.range_allowed == {"RANGED"} and settings.short_allowed == {"SHORT"}
    # A secret without a table is in neither set: as its (default) policy decides.
    assert not DEFAULT_POLICY.allow_range and not DEFAULT_POLICY.allow_short
