"""Spellings no list of patterns covers: any character JSON-escaped or percent-encoded,
base64 broken into lines of any width, non-ASCII values, and values up to 64 KB."""

from __future__ import annotations

import base64
import json
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindkey.config.model import MAX_VALUE_BYTES
from blindkey.redact.redactor import NUL_ANCHOR, Redactor
from blindkey.redact.views import JSON_STRING, PERCENT, active_views
from tests.redact.test_redactor import redact_all

NAME = "KEY"
MARK = b"[REDACTED:KEY]"
VALUE = "ghp_R4nd0m&Value<with>Some/Chars+=x9"


def json_escaped(value: str, chosen: set[int], upper: bool = False) -> bytes:
    """`value` as a JSON string body with the characters at `chosen` written as \\uXXXX."""
    out = []
    for index, char in enumerate(value):
        if index in chosen or char in '"\\':
            units = char.encode("utf-16-be")
            for i in range(0, len(units), 2):
                code = f"{int.from_bytes(units[i : i + 2], 'big'):04x}"
                out.append("\\u" + (code.upper() if upper else code))
        else:
            out.append(char)
    return "".join(out).encode()


def percent_encoded(value: str, chosen: set[int]) -> bytes:
    out = b""
    for index, char in enumerate(value):
        raw = char.encode()
        out += "".join(f"%{b:02X}" for b in raw).encode() if index in chosen else raw
    return out


def in_lines(text: bytes, width: int, newline: bytes) -> bytes:
    return newline.join(text[i : i + width] for i in range(0, len(text), width))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def assert_gone(out: bytes, value: str) -> None:
    assert value.encode() not in out
    assert MARK in out


def test_go_escapes_of_ampersand_and_angle_brackets() -> None:
    go = VALUE.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    out = redact_all(Redactor({NAME: VALUE}), [b'{"token":"' + go.encode() + b'"}'])
    assert out == b'{"token":"' + MARK + b'"}'


@pytest.mark.parametrize("upper", [False, True])
def test_every_character_json_escaped(upper: bool) -> None:
    body = json_escaped(VALUE, set(range(len(VALUE))), upper)
    out, count = Redactor({NAME: VALUE}).redact(b"[" + body + b"]")
    assert (out, count) == (b"[" + MARK + b"]", 1)


def test_astral_character_as_a_surrogate_pair() -> None:
    value = "key-\U0001f511-value-0123"
    body = json_escaped(value, {4})
    assert b"\\ud83d\\udd11" in body
    assert Redactor({NAME: value}).redact(body) == (MARK, 1)


def test_percent_encoding_of_characters_that_need_none() -> None:
    body = percent_encoded(VALUE, set(range(0, len(VALUE), 2)))
    assert Redactor({NAME: VALUE}).redact(b"q=" + body + b"&x=1") == (b"q=" + MARK + b"&x=1", 1)


@pytest.mark.parametrize(
    ("width", "newline"),
    [(76, b"\n"), (76, b"\r\n"), (60, b"\\n"), (64, b"\\r\\n"), (4, b"\n"), (1, b"\\n")],
)
def test_base64_in_lines(width: int, newline: bytes) -> None:
    value = "-----BEGIN KEY-----" + "".join(random.Random(width).choices("abcXYZ019+/", k=300))
    encoded = base64.b64encode(value.encode())
    body = b'{"content": "' + in_lines(encoded, width, newline) + b'"}'
    out = redact_all(Redactor({NAME: value}), [body[i : i + 97] for i in range(0, len(body), 97)])
    assert MARK in out
    # No run of the base64 longer than one line's worth of alignment leftovers survives.
    assert encoded[8:-8] not in out.replace(newline, b"")


def test_non_ascii_value_in_utf8_latin1_and_escapes() -> None:
    value = "pässwörd-ÿ-Œuvre-0123"
    redactor = Redactor({NAME: value})
    for form in (value.encode(), json_escaped(value, set(range(len(value)))),
                 percent_encoded(value, {1, 5})):  # fmt: skip
        assert redactor.redact(b"<" + form + b">") == (b"<" + MARK + b">", 1), form
    latin = "pässwörd-ÿ-value-0123"
    assert Redactor({NAME: latin}).redact(latin.encode("latin-1")) == (MARK, 1)


def test_text_with_escapes_and_lines_but_no_value_comes_out_unchanged() -> None:
    stream = Redactor({NAME: VALUE}).stream()
    events = (b'data: {"a": "\\u00e9\\n", "b": "%41"}\n\n', b"data: [DONE]\n\n")
    assert b"".join(stream.feed(event) for event in events) + stream.finish() == b"".join(events)


def test_an_escape_cut_between_chunks_is_held_then_redacted() -> None:
    body = json_escaped(VALUE, {0, 5})
    stream = Redactor({NAME: VALUE}).stream()
    first = stream.feed(b"x" + body[:3])  # `\u0` of the first character
    assert first + stream.feed(body[3:] + b"y") + stream.finish() == b"x" + MARK + b"y"


def test_the_hold_widens_with_the_escapes_in_use() -> None:
    redactor = Redactor({NAME: VALUE})
    plain = redactor.hold_length(10**6, ())
    assert redactor.hold_length(10**6, active_views(b"\\u0041")) > 5 * plain
    # A form spelled with an escape for every byte fits in what is held.
    body = b"y" * 10**4 + json_escaped(VALUE, set(range(len(VALUE))))
    stream = redactor.stream()
    assert stream.feed(body[:-1]) + stream.feed(body[-1:]) + stream.finish() == b"y" * 10**4 + MARK


def pem(size: int) -> str:
    rng = random.Random(size)
    body = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
    return "-----BEGIN PRIVATE KEY-----\n" + in_lines(body.encode(), 64, b"\n").decode()


@pytest.mark.parametrize("size", [16 * 1024, 60 * 1024])
def test_long_values_build_small_and_redact_in_every_form(size: int) -> None:
    value = pem(size)
    others = {f"S{i}": f"ordinary-secret-value-{i:04d}" for i in range(20)}
    tracemalloc.start()
    redactor = Redactor({NAME: value, **others})
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Quadratic prefix sets took ~1 GB and seconds at 8 KB; linear is a few MB.
    assert peak < 40 * size * 8, peak
    raw = value.encode()
    for form in (raw, base64.b64encode(raw), raw.hex().encode(), json.dumps(value).encode()):
        data = b"head " + form + b" tail"
        out = redact_all(redactor, [data[i : i + 4096] for i in range(0, len(data), 4096)])
        assert out == b"head " + (MARK if form[0:1] != b'"' else b'"' + MARK + b'"') + b" tail"
    near_miss = raw[:-1] + b"!"
    assert redact_all(redactor, [near_miss]) == near_miss


def test_values_over_the_limit_are_refused_without_showing_them() -> None:
    value = "v" * (MAX_VALUE_BYTES + 1)
    with pytest.raises(ValueError, match="over 65536 bytes") as caught:
        Redactor({NAME: value})
    assert "vvvv" not in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(
    value=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_categories=["Cs"]),
        min_size=8,
        max_size=40,
    ),
    family=st.sampled_from(["json", "json-upper", "percent", "lines"]),
    chosen=st.sets(st.integers(0, 39)),
    width=st.integers(1, 80),
    newline=st.sampled_from([b"\n", b"\r\n", b"\\n", b"\\r\\n"]),
    before=st.binary(max_size=100),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
)
def test_property_respelled_values_never_survive_any_chunking(
    value: str,
    family: str,
    chosen: set[int],
    width: int,
    newline: bytes,
    before: bytes,
    cuts: list[int],
) -> None:
    if family.startswith("json"):
        form = json_escaped(value, chosen, upper=family == "json-upper")
    elif family == "percent":
        form = percent_encoded(value, chosen)
    else:
        form = in_lines(base64.b64encode(value.encode()), width, newline)
    data = before + b" " + form + b" end"
    out = redact_all(Redactor({NAME: value}), chunked(data, cuts))
    assert value.encode() not in out
    assert MARK in out


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300).map(lambda b: bytes(c if c % 5 else 10 for c in b)))
def test_property_the_counting_map_of_line_breaks_agrees_with_the_general_one(
    data: bytes,
) -> None:
    from blindkey.redact.views import LINE_BREAKS, BreaksMap, ViewMap

    data = data.replace(b"\\", b"/")  # the counting map is used only without escapes
    counting, general = BreaksMap(data), ViewMap(LINE_BREAKS, data)
    for position in range(len(LINE_BREAKS.render(data)) + 1):
        assert counting.source_start(position) == general.source_start(position), position
        assert counting.source_end(position) == general.source_end(position), position


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.sampled_from([b"%", b"4", b"1", b"e", b"F", b"z", b"\\", b"x", b"\xe9"])))
def test_property_percent_rendered_in_c_agrees_with_the_regex(data: list[bytes]) -> None:
    joined = b"".join(data)
    assert PERCENT.render(joined) == PERCENT.escape.sub(PERCENT.decode, joined)


@settings(max_examples=500, deadline=None)
@given(
    data=st.lists(
        st.sampled_from(
            [
                b"\\",
                b"u",
                b"d",
                b"8",
                b"3",
                b"D",
                b"c",
                b"e",
                b"0",
                b"0041",
                b'"',
                b"/",
                b"n",
                b"\x01",
            ]
        )
    )
)
def test_property_json_rendered_in_c_agrees_with_the_regex(data: list[bytes]) -> None:
    joined = b"".join(data)
    assert JSON_STRING.render(joined) == JSON_STRING.escape.sub(JSON_STRING.decode, joined)


def test_base32_is_found_in_any_case_at_any_alignment() -> None:
    value = "sk-live-0123456789abcdefghij"
    redactor = Redactor({"K": value})
    for pad in range(5):
        text = base64.b32encode(b"p" * pad + value.encode())
        for spelled in (text, text.lower(), text.swapcase()):
            out, count = redactor.redact(b"<" + spelled + b">")
            assert count == 1 and b"[REDACTED:K]" in out, (pad, spelled)


def test_a_long_utf16_value_is_confirmed_whole_past_its_anchor() -> None:
    """UTF-16/32 forms go to Hyperscan by their first NUL_ANCHOR bytes: the rest is compared."""
    value = "v" * 30 + "-0123456789abcdefghijklmnopqrstuvwxyz"
    redactor = Redactor({"K": value})
    whole = value.encode("utf-16-le")
    assert len(whole) > NUL_ANCHOR
    assert redactor.redact(b"[" + whole + b"]")[1] == 1
    changed = value[:-1] + "!"
    assert redactor.redact(changed.encode("utf-16-le"))[1] == 0
