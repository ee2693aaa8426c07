"""Stripping every encoding of every secret value from what flows back to the agent.

A `Redactor` is built once per secret set; each response gets a `RedactStream` that
is fed chunk by chunk and holds back a tail of a fixed length, whatever its bytes are:
holding back only what could begin a value told the agent which bytes could.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import threading
from collections.abc import Mapping
from urllib.parse import quote, quote_plus

import hyperscan

from blindkey.config.model import MAX_VALUE_BYTES
from blindkey.redact.views import WIDEST_ESCAPE, View, active_views

# Derived forms this short would match ordinary text; the raw value is always kept.
_MIN_DERIVED = 6


def _b64_cores(value: bytes, alphabet: bytes | None) -> set[bytes]:
    """The base64 text of `value` at each of the three byte alignments.

    At alignment k the value follows k unknown bytes, so only the characters whose
    six bits come wholly from the value are fixed: those are the pattern.
    """
    forms: set[bytes] = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + value, altchars=alphabet)
        start = -(-8 * k // 6)
        end = (8 * (k + len(value))) // 6
        forms.add(encoded[start:end])
    whole = base64.b64encode(value, altchars=alphabet)
    forms.add(whole)
    forms.add(whole.rstrip(b"="))
    return forms


def _b32_cores(value: bytes) -> set[bytes]:
    """The base32 text of `value` at each of the five byte alignments: only the characters
    wholly the value's (a padded whole form adds at most 4 bits of the last byte). Matched
    without regard to case: one caseless pattern per alignment costs Hyperscan a fraction of
    an upper and a lower one each (1,000 values: 0.9 s against 4 s to compile)."""
    forms: set[bytes] = set()
    for k in range(5):
        encoded = base64.b32encode(b"\0" * k + value)
        start = -(-8 * k // 5)
        end = (8 * (k + len(value))) // 5
        forms.add(encoded[start:end])
    return {form for form in forms if len(form) >= _MIN_DERIVED}


# How HTML writers spell the characters they escape: Go's html/template (`+` too, and in
# attributes `=`, space and backquote), Python's html.escape, PHP's htmlspecialchars, and
# encoders that write every one as a numeric entity, decimal or hex.
_HTML_STYLES = [
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;", "+": "&#43;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;", "+": "&#43;",
     "=": "&#61;", " ": "&#32;", "`": "&#96;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#039;"},
    {c: f"&#{ord(c)};" for c in "&<>\"'+=/`"},
    {c: f"&#x{ord(c):X};" for c in "&<>\"'+=/`"},
    {c: f"&#x{ord(c):x};" for c in "&<>\"'+=/`"},
]  # fmt: skip


def _html_forms(form: bytes) -> set[bytes]:
    if not any(byte in form for byte in b"&<>\"'+=/` "):
        return set()
    out = set()
    for style in _HTML_STYLES:
        table = {ord(c): e for c, e in style.items()}
        out.add(form.decode("latin-1").translate(table).encode("latin-1"))
    return out - {form}


def _url_forms(text: str) -> set[str]:
    forms = {quote(text, safe=""), quote(text, safe="/"), quote_plus(text, safe="")}
    return forms | {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}


def _json_forms(text: str) -> set[str]:
    forms = {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    forms |= {f.replace("/", "\\/") for f in forms}
    return forms | {
        re.sub(r"\\u[0-9a-f]{4}", lambda m: m.group(0).upper().replace("\\U", "\\u"), f)
        for f in forms
    }


def encodings(value: str) -> set[bytes]:
    """Every form of `value` a response could carry it in."""
    raw = value.encode("utf-8", "surrogatepass")
    forms: set[bytes] = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    with contextlib.suppress(UnicodeEncodeError):  # an answer may echo it in Latin-1
        forms.add(value.encode("latin-1"))
    forms |= _b64_cores(raw, None) | _b64_cores(raw, b"-_")
    forms |= {f.encode() for f in _url_forms(value) | _json_forms(value)}
    # Quoted-printable (a value short of a line), and the HTML spellings of every form.
    printable = binascii.b2a_qp(raw, quotetabs=True)
    forms |= {printable, re.sub(rb"=[0-9A-F]{2}", lambda m: m.group().lower(), printable)}
    forms |= {spelled for form in list(forms) for spelled in _html_forms(form)}
    # UTF-16 and UTF-32 bodies, either byte order (a BOM comes only at the body's start).
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        forms.add(value.encode(codec, "surrogatepass"))
    return {f for f in forms if f == raw or len(f) >= _MIN_DERIVED}


def caseless_encodings(value: str) -> set[bytes]:
    """Forms of `value` matched without regard to case (base32, upper or lower)."""
    return _b32_cores(value.encode("utf-8", "surrogatepass"))


def secret_parts(value: str) -> list[str]:
    """The value, and the password of a `user:pass` pair, which is a secret on its own."""
    parts = [value]
    if ":" in value:
        password = value.split(":", 1)[1]
        if len(password) >= 8:
            parts.append(password)
    return parts


# Hyperscan gets at most this much of a pattern; a longer one is confirmed by comparison.
ANCHOR = 1024
# The same for forms with NULs (UTF-16, UTF-32), which go to Hyperscan as regexes of
# escapes: their compile time grows with their length (1,000 values: 1.8 s whole, 0.2 s
# at 64 bytes), and 64 bytes of one are as rare as its whole.
NUL_ANCHOR = 64
# The stream's hold never falls below this, and is a power of two: all it tells an agent
# about the values is the power of two above the longest form's length.
HOLD_FLOOR = 256
# A stream's held tail goes out as later chunks push it out, at the end, or this many
# seconds after it began to be held: a constant, so when bytes arrive tells the agent
# nothing about them.
# Under the gap between an LLM's streamed tokens (tens of ms) and far under what a person
# notices; long enough that a write the network split in two is usually joined first.
FLUSH_DELAY = 0.02

Span = tuple[int, int, int]  # start, end, pattern index


class _Matcher:
    """Hyperscan over literals. Its Python binding takes a literal as a C string, so one
    holding a NUL (a UTF-16 or UTF-32 form) goes to a second database as a regex of escapes.
    """

    def __init__(self, keys: list[tuple[bytes, bool]]) -> None:
        self.databases: list[tuple[hyperscan.Database, list[int]]] = []
        # A database has one scratch space: streams redacted on worker threads take turns.
        self.lock = threading.Lock()
        plain = [i for i, (literal, _) in enumerate(keys) if b"\0" not in literal]
        nul = [i for i, (literal, _) in enumerate(keys) if b"\0" in literal]
        for ids, literal in ((plain, True), (nul, False)):
            if not ids:
                continue
            database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            expressions = [
                keys[i][0] if literal else b"".join(b"\\x%02x" % c for c in keys[i][0]) for i in ids
            ]
            caseless = hyperscan.HS_FLAG_SOM_LEFTMOST | hyperscan.HS_FLAG_CASELESS
            database.compile(
                expressions=expressions,
                ids=list(range(len(ids))),
                elements=len(ids),
                flags=[caseless if keys[i][1] else hyperscan.HS_FLAG_SOM_LEFTMOST for i in ids],
                literal=literal,
            )
            self.databases.append((database, ids))

    def scan(self, data: bytes) -> list[tuple[int, int, int]]:
        found: list[tuple[int, int, int]] = []
        for database, ids in self.databases:

            def on_match(
                local: int, start: int, end: int, flags: int, context: object, ids: list[int] = ids
            ) -> None:
                found.append((start, end, ids[local]))

            with self.lock:
                database.scan(data, match_event_handler=on_match)
        return found


def _rounded(longest: int) -> int:
    return max(HOLD_FLOOR, 1 << max(longest - 1, 0).bit_length())


def _merge(spans: list[Span]) -> list[Span]:
    """Overlapping matches become one replacement, named after the leftmost, longest one."""
    spans.sort(key=lambda span: (span[0], -span[1]))
    merged: list[Span] = []
    for start, end, index in spans:
        if merged and start < merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end, merged[-1][2])
            continue
        merged.append((start, end, index))
    return merged


class Redactor:
    """One compiled matcher over every form of every value (Hyperscan, literal mode).

    Memory and build time grow with the total size of the forms, not with its square:
    patterns longer than ANCHOR are found by their first ANCHOR bytes and confirmed by
    comparison.
    """

    def __init__(self, secrets: Mapping[str, str]) -> None:
        names: dict[tuple[bytes, bool], str] = {}
        # Longer values first so a value that contains another is reported under its own name.
        for name, value in sorted(secrets.items(), key=lambda kv: -len(kv[1])):
            if not value:
                continue
            if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
                raise ValueError(f"{name}: values over {MAX_VALUE_BYTES} bytes cannot be redacted")
            for part in secret_parts(value):
                for form in encodings(part):
                    names.setdefault((form, False), name)
                for form in caseless_encodings(part):
                    names.setdefault((form, True), name)
        self.patterns = [form for form, _ in names]
        self.caseless = [caseless for _, caseless in names]
        self.replacements = [f"[REDACTED:{names[key]}]".encode() for key in names]
        self.max_len = max((len(p) for p in self.patterns), default=0)
        self.min_len = min((len(p) for p in self.patterns), default=0)
        anchors: dict[tuple[bytes, bool], list[int]] = {}
        for index, (pattern, caseless) in enumerate(names):
            anchor = pattern[: NUL_ANCHOR if b"\0" in pattern else ANCHOR]
            anchors.setdefault((anchor, caseless), []).append(index)
        self._anchored = [
            sorted(ids, key=lambda i: -len(self.patterns[i])) for ids in anchors.values()
        ]
        self._anchor_lengths = [len(anchor) for anchor, _ in anchors]
        self.hold = _rounded(self.max_len)
        # UTF-16 and UTF-32 forms (the only ones with NULs) are not spelled with escapes.
        self.view_hold = _rounded(max((len(p) for p in self.patterns if b"\0" not in p), default=0))
        self.database = _Matcher(list(anchors)) if self.patterns else None

    def hold_length(self, size: int, views: tuple[View, ...]) -> int:
        """How many trailing bytes of `size` a stream keeps back: enough for any form that
        is not yet whole, in any active view. A function of the size, the views active on
        the data and the longest form's length only, never of what the bytes are, so what
        is held and for how long tells the agent nothing about whether they begin a value.
        """
        width = max((view.width for view in views), default=0)
        return min(size, max(self.hold, width * self.view_hold) + WIDEST_ESCAPE)

    def _literal_matches(self, data: bytes) -> list[Span]:
        assert self.database is not None
        spans: list[Span] = []
        for start, _, anchor_id in self.database.scan(data):
            whole = self._anchor_lengths[anchor_id]
            for index in self._anchored[anchor_id]:
                pattern = self.patterns[index]
                if len(pattern) <= whole or self._confirmed(data, start, index):
                    spans.append((start, start + len(pattern), index))
                    break
        return spans

    def _confirmed(self, data: bytes, start: int, index: int) -> bool:
        """Whether the whole of a pattern longer than its anchor is at `start`."""
        pattern = self.patterns[index]
        if self.caseless[index]:
            return data[start : start + len(pattern)].upper() == pattern.upper()
        return data.startswith(pattern, start)

    def _matches(self, data: bytes, views: tuple[View, ...] | None = None) -> list[Span]:
        """Every value in every spelling, as merged, non-overlapping source spans."""
        spans = self._literal_matches(data)
        for view in active_views(data) if views is None else views:
            rendered = view.render(data)
            if rendered == data:
                continue
            found = self._literal_matches(rendered)
            if found:
                where = view.mapping(data)
                spans += [(where.source_start(s), where.source_end(e), i) for s, e, i in found]
        return _merge(spans) if spans else spans

    def substitute(
        self,
        data: bytes,
        limit: int | None = None,
        views: tuple[View, ...] | None = None,
        begin: int = 0,
    ) -> tuple[bytes, int, int]:
        """Replace matches starting before `limit` in `data[begin:]`; return (output of
        `data[begin:consumed]`, consumed, count). The bytes before `begin` were sent
        already: a match that starts there has only its part from `begin` on replaced."""
        stop = len(data) if limit is None else limit
        if self.database is None or len(data) <= begin:
            return data[begin:stop], max(stop, begin), 0
        out: list[bytes] = []
        position, count = begin, 0
        for start, end, pattern_id in self._matches(data, views):
            if start >= stop:
                break
            if end <= position:
                continue
            out.append(data[position:start])
            out.append(self.replacements[pattern_id])
            position = end
            count += 1
        if not count:
            return data[begin:stop], max(stop, begin), 0
        consumed = max(position, stop)
        out.append(data[position:consumed])
        return b"".join(out), consumed, count

    def redact(self, data: bytes) -> tuple[bytes, int]:
        output, _, count = self.substitute(data)
        return output, count

    def redact_text(self, text: str) -> tuple[str, int]:
        """`text` with every value replaced. A header or reason phrase arrives as bytes
        decoded as Latin-1, so a UTF-8 value in it is looked for in those bytes too."""
        if len(text) * 6 < self.min_len:  # even at 6 bytes a character, too short to match
            return text, 0
        count = 0
        if not text.isascii():
            with contextlib.suppress(UnicodeEncodeError):
                wire, count = self.redact(text.encode("latin-1"))
                text = wire.decode("latin-1")
        output, more = self.redact(text.encode("utf-8", "surrogateescape"))
        return output.decode("utf-8", "surrogateescape"), count + more

    def redact_texts(self, texts: list[str]) -> tuple[list[str], int]:
        """`redact_text` of each; one scan over all of them when nothing matches (the rule)."""
        if self.database is None:
            return texts, 0
        # A value inside the joined text is a substring of it: no match there, none in any.
        joined = "\n".join(texts)
        if joined.isascii() and not self._matches(joined.encode()):
            return texts, 0
        total = 0
        out = []
        for text in texts:
            clean, count = self.redact_text(text)
            out.append(clean)
            total += count
        return out, total

    def stream(self) -> RedactStream:
        return RedactStream(self)


class RedactStream:
    """Per-response state: feed chunks in order, `flush()` when the stream pauses, then
    `finish()`. Each feed keeps back the last `hold_length` bytes whatever they are."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.tail = b""
        # What a flush sent, kept until no value cut by the flush can still be completed,
        # so the rest of one is replaced; `since` counts the bytes fed after the flush.
        self.sent = b""
        self.since = 0
        self.count = 0

    def feed(self, chunk: bytes) -> bytes:
        redactor = self.redactor
        if redactor.database is None:
            return chunk
        held = self.tail + chunk if self.tail else chunk
        data = self.sent + held if self.sent else held
        views = active_views(data)
        reach = redactor.hold_length(len(data) + 1, views)
        cut = len(data) - min(len(held), reach)
        output, consumed, count = redactor.substitute(data, cut, views, len(self.sent))
        self.tail = data[consumed:]
        self.count += count
        if self.sent:
            self.since += len(chunk)
            # A value across the flush point is no longer than `reach`: once that much has
            # come after it, every such value has been seen whole.
            if self.since >= reach:
                self.sent = b""
            else:
                self.sent = data[max(0, consumed - reach) : consumed]
        return output

    def flush(self) -> bytes:
        """Everything held, now: the stream has paused (a fixed delay with no chunk)."""
        redactor = self.redactor
        data = self.sent + self.tail
        output, _, count = redactor.substitute(data, None, None, len(self.sent))
        self.count += count
        self.tail = b""
        reach = redactor.hold_length(len(data) + 1, active_views(data))
        self.sent, self.since = data[len(data) - min(len(data), reach) :], 0
        return output

    def finish(self) -> bytes:
        output = self.flush()
        self.sent = b""
        return output
