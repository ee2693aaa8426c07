"""Text in lines is scanned once, in its line-break view, for every form without a raw line
break: what is found, and where, is what scanning the text as sent as well would find."""

from __future__ import annotations

import base64
import binascii

from hypothesis import given, settings
from hypothesis import strategies as st

from blindkey.redact.redactor import Redactor
from blindkey.redact.shards import Span
from blindkey.redact.views import BreaksMap
from tests.redact.test_redactor import redact_all
from tests.redact.test_spellings import chunked

VALUE = "sk-live-Zx9Q7vLm2Kp4Rt8Wn3Yb6Hc1Jd5Fs0Ga"
# Over a quoted-printable line: its quoted-printable form has a soft line break in it.
LONG = "p@ss=" + "Q7vLm2Kp4Rt8Wn3Yb6Hc1Jd5Fs0Ga-" * 4


class BothScans(Redactor):
    """The redactor as it was: the text as sent scanned for every form, then the views."""

    def _literal_matches(self, data: bytes, with_breaks_only: bool = False) -> list[Span]:
        return super()._literal_matches(data)


def test_a_form_with_a_line_break_is_found_in_text_in_lines() -> None:
    printable = binascii.b2a_qp(LONG.encode(), quotetabs=True)
    assert b"=\n" in printable
    redactor = Redactor({"LONG": LONG, "KEY": VALUE})
    body = b"line one\nline two\n" + printable + b"\nthe end\n"
    out, count = redactor.redact(body)
    assert count == 1 and b"[REDACTED:LONG]" in out and printable not in out
    assert redact_all(redactor, chunked(body, [5, 40, 90])).count(b"[REDACTED:LONG]") == 1


def test_values_whole_and_across_lines_are_found_as_before() -> None:
    redactor = Redactor({"KEY": VALUE})
    encoded = base64.b64encode(b"xy" + VALUE.encode() + b"z" * 20)
    broken = b"\n".join(encoded[i : i + 16] for i in range(0, len(encoded), 16))
    body = b"a\r\n" + VALUE.encode() + b"\n" + broken + b"\nb " + VALUE.encode() + b"\r\n"
    out, count = redactor.redact(body)
    assert (out, count) == BothScans({"KEY": VALUE}).redact(body)
    assert count == 3 and VALUE.encode() not in out


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from(
            [b"\n", b"\r\n", b"\r", b"abc", b" ", b"%", b"\\", b"\\n", VALUE.encode(), b"sk-li"]
        ),
        max_size=30,
    )
)
def test_the_same_spans_as_scanning_both(pieces: list[bytes]) -> None:
    secrets = {"KEY": VALUE, "LONG": LONG}
    data = b"".join(pieces)
    assert Redactor(secrets).redact(data) == BothScans(secrets).redact(data)


def test_the_break_map_counts_on_from_its_last_lookup_in_any_order() -> None:
    data = b"ab\ncd\r\n\nef\rg\n"
    kept = [i for i, byte in enumerate(data) if byte not in b"\r\n"]
    mapping = BreaksMap(data)
    for position in [5, 0, 6, 2, 3, 1, 4, 6, 0]:
        expected = kept[position] if position < len(kept) else len(data)
        assert mapping.source_start(position) == expected, position
        assert mapping.source_end(position + 1) == kept[min(position, len(kept) - 1)] + 1
