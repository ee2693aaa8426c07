"""Normalised views of an answer: the same bytes with one family of spellings undone.

A value can be spelled in ways no finite list of patterns covers: JSON may escape any
character as `\\uXXXX`, a URL may percent-encode characters that need no encoding, and
base64 may be broken into lines of any width (MIME's 76 columns, GitHub's 60 with the line
break itself JSON-escaped). Rather than a pattern per spelling, the redactor scans a view
in which that family is decoded, and maps what it finds there back to the bytes sent.

A view is rendered only when a byte that begins its escapes occurs, so an answer without
`\\`, `%` or line breaks costs nothing here; the map back is worked out only for what
matched.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]


def _json_escape(match: re.Match[bytes]) -> bytes:
    pair, unit, short = match.group(1), match.group(3), match.group(4)
    if pair is not None:
        high, low = int(pair, 16), int(match.group(2), 16)
        return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)).encode()
    if unit is not None:
        return chr(int(unit, 16)).encode("utf-8", "surrogatepass")
    return _SHORT_ESCAPES[short]


_SHORT_ESCAPES = {
    b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b",
    b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t",
}  # fmt: skip


_LONE_BACKSLASH = re.compile(rb'\\(?!["\\/bfnrt]|u[0-9a-fA-F]{4})')
_BARE_QUOTE = re.compile(rb'(?<!\\)"')


def _json_in_c(data: bytes) -> bytes:
    """The JSON view of ASCII `data` by the json module's C string scanner, the same bytes
    as the regex gives, with no call per escape: each `\\\\` and each backslash that
    begins no escape become `\\u005c`, each bare quote `\\u0022`, so the whole is one
    valid JSON string body."""
    body = data.replace(b"\\\\", b"\\u005c")
    body = _LONE_BACKSLASH.sub(rb"\\u005c", body)
    body = _BARE_QUOTE.sub(rb"\\u0022", body)
    text: str = scanstring('"' + body.decode("ascii") + '"', 1, False)[0]
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class View:
    """One family of spellings: what it decodes, and what an escape cut short looks like."""

    name: str
    escape: re.Pattern[bytes]
    decode: Callable[[re.Match[bytes]], bytes]
    # When every escape decodes to the same bytes, rendering runs in C, without a callback.
    constant: bytes | None
    # The most source bytes one byte of the view can take: a stream holds back that many
    # times the longest form, so a form cut by a chunk's end is never released in part.
    width: int

    def render(self, data: bytes) -> bytes:
        if self is NULS:
            return data.replace(b"\0", b"")
        if self is LINE_BREAKS and b"\\" not in data:
            # The same result as the regex when no escaped break can occur, at memchr speed
            # (per 64 KiB of base64 lines: the regex ~600 µs, translate ~80, replace ~17).
            data = data.replace(b"\n", b"")
            return data.replace(b"\r", b"") if b"\r" in data else data
        if self is LINE_BREAKS and b"\\/" not in data:
            return _BREAKS.sub(b"", data)  # the same, in C, when no `\/` needs a callback
        if self is PERCENT:
            # Every `%` an escape (the usual case): decoded in C, without a call per escape.
            # One that is not makes the codec refuse, and the regex below takes it.
            # A `%` cut off by the chunk's end stays as it is, as the regex leaves it.
            cut = data.rfind(b"%", max(0, len(data) - 2))
            head, rest = (data[:cut], data[cut:]) if cut >= 0 else (data, b"")
            with contextlib.suppress(ValueError):
                escaped = head.replace(b"\\", b"\\\\").replace(b"%", b"\\x")
                return bytes(codecs.escape_decode(escaped)[0]) + rest
        if self is JSON_STRING and data.isascii():
            return _json_in_c(data)
        if self.constant is not None:
            return self.escape.sub(self.constant, data)
        return self.escape.sub(self.decode, data)

    def mapping(self, data: bytes) -> ViewMap | BreaksMap:
        if self is NULS:
            return BreaksMap(data, b"\0")
        if self is LINE_BREAKS and b"\\" not in data:
            return BreaksMap(data)
        return ViewMap(self, data)


class ViewMap:
    """Positions in a view mapped back to the source bytes they came from."""

    def __init__(self, view: View, data: bytes) -> None:
        # Each escape: where it starts in the view, and its extent in view and source.
        self.view_starts: list[int] = []
        self.spans: list[tuple[int, int, int, int]] = []  # view start, view end, src start, end
        shrink = 0
        for match in view.escape.finditer(data):
            decoded = len(view.decode(match))
            start = match.start() - shrink
            self.view_starts.append(start)
            self.spans.append((start, start + decoded, match.start(), match.end()))
            shrink += match.end() - match.start() - decoded

    def _locate(self, position: int) -> tuple[int, int, int, int] | None:
        index = bisect_right(self.view_starts, position) - 1
        return self.spans[index] if index >= 0 else None

    def source_start(self, position: int) -> int:
        """The source offset of view byte `position` (the escape's start if inside one)."""
        span = self._locate(position)
        if span is None:
            return position
        _, view_end, src_start, src_end = span
        return src_start if position < view_end else src_end + (position - view_end)

    def source_end(self, end: int) -> int:
        """The source offset just past view byte `end - 1` (the escape's end if inside one)."""
        if end <= 0:
            return 0
        span = self._locate(end - 1)
        if span is None:
            return end
        _, view_end, _, src_end = span
        return src_end if end - 1 < view_end else src_end + (end - view_end)


class BreaksMap:
    """The same map for views that only remove bytes (raw line breaks, NULs), worked out by
    counting in C: walking every break of a 64 KiB chunk of base64 lines (850 of them) in
    Python took ~1.7 ms. Each lookup counts on from the last one at or before it (matches
    come in order), so the breaks of a chunk are counted about once, not once per match
    and iteration (~80 us a match at the end of a 64 KiB chunk)."""

    def __init__(self, data: bytes, removed: bytes = b"\r\n") -> None:
        self.data = data
        # The removed bytes that occur (a CR is rare): one count each.
        self.removed = bytes(byte for byte in removed if byte in data)
        self._last = (0, 0)  # a view position and the source offset of its byte

    def _removed(self, start: int, end: int) -> int:
        data = self.data
        return sum(data.count(byte, start, end) for byte in self.removed)

    def source_start(self, position: int) -> int:
        """The source offset s of the kept byte with `position` kept bytes before it:
        s = position + (breaks before s), reached by iterating from below."""
        view, known = self._last if self._last[0] <= position else (0, 0)
        source, counted = known + position - view, known
        while more := self._removed(counted, source):
            counted, source = source, source + more
        data = self.data
        while source < len(data) and data[source] in self.removed:
            source += 1
        self._last = (position, source)
        return source

    def source_end(self, end: int) -> int:
        return self.source_start(end - 1) + 1 if end > 0 else 0


JSON_STRING = View(
    name="json",
    escape=re.compile(
        rb"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"
        rb"|\\u([0-9a-fA-F]{4})"
        rb'|\\(["\\/bfnrt])'
    ),
    decode=_json_escape,
    constant=None,
    width=6,  # `\u0041` is one byte
)
PERCENT = View(
    name="percent",
    escape=re.compile(rb"%([0-9a-fA-F]{2})"),
    decode=lambda match: bytes([int(match.group(1), 16)]),
    constant=None,
    width=3,  # %41 is one byte
)
# Line breaks inside base64 (raw or JSON-escaped): the view has none of them. A JSON
# writer may escape the base64's `/` as `\/` as well (PHP's json_encode does by default).
_BREAKS = re.compile(rb"[\r\n]|\\[rn]")
LINE_BREAKS = View(
    name="lines",
    escape=re.compile(rb"[\r\n]|\\[rn]|\\(/)"),
    decode=lambda match: match.group(1) or b"",
    constant=None,
    width=2,  # base64 in lines of two or more characters, CRLF-broken
)
# UTF-16 and UTF-32 bodies: without their NULs, a value of characters up to U+00FF is its
# Latin-1 (ASCII) form, already a pattern: four patterns fewer a value, and the shard's
# second database (one with NULs is a regex), so a chunk is scanned half as many times.
# One source byte a view byte for the hold: a wide form's own length is in the longest.
NULS = View(
    name="nuls",
    escape=re.compile(rb"\0"),
    decode=lambda match: b"",
    constant=b"",
    width=1,
)
VIEWS = (JSON_STRING, PERCENT, LINE_BREAKS, NULS)
# Source bytes past `width` times the longest form that a form may need: a surrogate pair.
WIDEST_ESCAPE = 12


def active_views(data: bytes) -> tuple[View, ...]:
    """The views that differ from `data` itself (a few memchr calls)."""
    backslash = b"\\" in data
    json_string = (JSON_STRING,) if backslash else ()
    percent = (PERCENT,) if b"%" in data else ()
    lines = (LINE_BREAKS,) if backslash or b"\n" in data or b"\r" in data else ()
    nuls = (NULS,) if b"\0" in data else ()
    return json_string + percent + lines + nuls
