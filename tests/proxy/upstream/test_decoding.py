"""Content-Encoding as the list it is: every layer, every gzip member, bounded steps."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindkey.proxy.upstream.decoding import STEP, Decoder, DecodingError, codings, undecodable


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["gzip"], ["gzip"]),
        (["gzip", "gzip"], ["gzip", "gzip"]),
        (["deflate, gzip"], ["deflate", "gzip"]),
        (["identity", "br"], ["br"]),
        ([" GZip ,identity, , deflate"], ["gzip", "deflate"]),
        (["identity"], []),
    ],
)
def test_codings_are_every_line_in_order(lines: list[str], expected: list[str]) -> None:
    assert codings(lines) == expected


@pytest.mark.parametrize(
    ("applied", "refused"),
    [
        (["gzip", "deflate"], None),
        (["br"], "br"),
        (["gzip", "x-unknown"], "x-unknown"),
        (["gzip"] * 5, "gzip, gzip, gzip, gzip, gzip"),
    ],
)
def test_undecodable_names_the_first_layer_it_cannot_undo(
    applied: list[str], refused: str | None
) -> None:
    assert undecodable(applied) == refused


def decode(applied: list[str], body: bytes, cuts: Sequence[int] = ()) -> list[bytes]:
    decoder = Decoder(applied)
    points = sorted({c % (len(body) + 1) for c in cuts})
    out: list[bytes] = []
    for a, b in zip([0, *points], [*points, len(body)], strict=True):
        out.extend(decoder.feed(body[a:b]))
    out.extend(decoder.finish())
    return out


def test_layers_are_undone_last_applied_first() -> None:
    body = gzip.compress(zlib.compress(b"payload"))  # deflate applied, then gzip
    assert b"".join(decode(["deflate", "gzip"], body)) == b"payload"


def test_a_bomb_is_decoded_in_bounded_steps() -> None:
    body = gzip.compress(gzip.compress(bytes(8 * 2**20)))
    steps = decode(["gzip", "gzip"], body)
    assert sum(map(len, steps)) == 8 * 2**20
    assert max(map(len, steps)) <= STEP


@pytest.mark.parametrize(
    ("applied", "body", "message"),
    [
        (["gzip"], gzip.compress(b"x" * 1000)[:-8], "ends early"),
        (["gzip"], b"not gzip at all", "does not decode"),
        (["gzip"], gzip.compress(b"x") + b"trailing garbage", "does not decode"),
        (["deflate"], zlib.compress(b"x") + b"more", "after the end"),
    ],
)
def test_bad_bodies_are_errors(applied: list[str], body: bytes, message: str) -> None:
    with pytest.raises(DecodingError, match=message):
        decode(applied, body)


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
    layers=st.integers(1, 3),
    cuts=st.lists(st.integers(0, 20000), max_size=10),
)
def test_property_members_and_layers_decode_whole_under_any_chunking(
    parts: list[bytes], layers: int, cuts: list[int]
) -> None:
    # The innermost layer is several gzip members; each outer layer wraps the whole.
    body = b"".join(gzip.compress(part) for part in parts)
    for _ in range(layers - 1):
        body = gzip.compress(body)
    assert b"".join(decode(["gzip"] * layers, body, cuts)) == b"".join(parts)
