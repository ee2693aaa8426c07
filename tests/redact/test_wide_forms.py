"""UTF-16 and UTF-32 bodies (issue 24 item 8): a value of characters up to U+00FF is found
in the NUL-less view of a wide body, not by four patterns of its own; wider characters keep
theirs; the hold a stream keeps is what it was."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindkey.redact.redactor import Redactor
from blindkey.redact.shards import ESCAPES
from blindkey.redact.views import NULS, active_views
from tests.redact.test_redactor import redact_all
from tests.redact.test_spellings import chunked

CODECS = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")
MARK = b"[REDACTED:KEY]"


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "value",
    ["sk-live-0123456789abcdefXYZ", "pässwörd-ÿ-value-0123", "key-€-and-Ω-value-0123"],
)
def test_a_wide_body_is_redacted_in_every_chunking(codec: str, value: str) -> None:
    redactor = Redactor({"KEY": value})
    body = f'{{"token": "{value}", "n": 1}}'.encode(codec)
    form = value.encode(codec)
    form = form[len("\ufeff".encode(codec)) :] if codec in ("utf-16", "utf-32") else form
    for cut in range(1, len(body), 3):
        out = redact_all(redactor, [body[:cut], body[cut:]])
        assert MARK in out and form[4:-4] not in out, (codec, cut)


def test_a_value_that_is_its_latin1_form_has_no_wide_patterns() -> None:
    """Wide forms are the only ones compiled as regexes, into a database of their own."""
    narrow = Redactor({"KEY": "pässwörd-ÿ-value-0123"})
    assert [ESCAPES in shard._matcher.kinds for shard in narrow.shards] == [False]
    wider = Redactor({"KEY": "key-€-and-Ω-value-0123"})
    assert [shard._matcher.kinds.count(ESCAPES) for shard in wider.shards] == [1]


def test_the_hold_is_what_the_wide_forms_made_it() -> None:
    value = "L" * 700  # its UTF-32 form is 2,800 bytes
    redactor = Redactor({"KEY": value})
    assert redactor.hold == 4096
    wide = active_views(b"a\0b\0")
    assert wide == (NULS,)
    assert redactor.hold_length(10**6, wide) == redactor.hold_length(10**6, ())
    body = b"x" * 10**4 + value.encode("utf-32-le") + b"\0y"
    assert redact_all(redactor, chunked(body, [5000, 10**4 + 1, 10**4 + 2799])).count(MARK) == 1


@settings(max_examples=150, deadline=None)
@given(
    value=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_categories=["Cs"]),
        min_size=8,
        max_size=40,
    ),
    codec=st.sampled_from(CODECS),
    before=st.binary(max_size=100),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
)
def test_property_wide_values_never_survive_any_chunking(
    value: str, codec: str, before: bytes, cuts: list[int]
) -> None:
    data = before + value.encode(codec) + "end".encode(codec)
    out = redact_all(Redactor({"KEY": value}), chunked(data, cuts))
    assert MARK in out
    assert value.encode(codec) not in out
