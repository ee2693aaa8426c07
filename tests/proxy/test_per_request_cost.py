"""What each call pays only when it uses a feature (issue 22's bench against 37a2d26): SigV4's
checks need AWS keys bound to the call, an answer's head is scanned once when it holds no
value, and one pass over the answer's headers serves both the part refusal and the usage
meter. Each shortcut is checked to decide exactly as the full path it skips would."""

from __future__ import annotations

import orjson
import pytest

from blindkey.proxy.request.authorise import Grant
from blindkey.proxy.request.parse import parse_spec
from blindkey.proxy.request.pipeline import _content_headers
from blindkey.proxy.request.relay import _nothing_in
from blindkey.proxy.request.usage import meter_for
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
    ("headers", "found"),
    [
        ([("Content-Type", "a/json"), ("Content-Length", "2")], ("a/json", False)),
        ([("content-range", "bytes 0-1/9"), ("CONTENT-TYPE", "text/plain")], ("text/plain", True)),
        ([("Content-Type", "text/x-a"), ("Content-Type", "x/y")], ("text/x-a", False)),
        ([("X-Content-Type", "a/b"), ("Content-Ranges", "x")], (None, False)),
    ],
)  # fmt: skip
def test_one_pass_finds_the_content_type_and_any_range(
    headers: list[tuple[str, str]], found: tuple[str | None, bool]
) -> None:
    assert _content_headers(headers) == found


def test_the_meter_is_made_for_json_and_sse_successes_only() -> None:
    assert meter_for(200, "application/json; charset=utf-8") is not None
    assert meter_for(200, "Text/Event-Stream") is not None
    assert meter_for(200, "text/html") is None
    assert meter_for(200, None) is None
    assert meter_for(404, "application/json") is None
