"""Stripping every encoding of every secret value from what flows back to the agent.

A `Redactor` is built once per secret set; each response gets a `RedactStream` that
is fed chunk by chunk and holds back only a tail that could still begin a pattern.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from urllib.parse import quote, quote_plus

import hyperscan

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
    raw = value.encode("utf-8")
    forms: set[bytes] = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    forms |= _b64_cores(raw, None) | _b64_cores(raw, b"-_")
    forms |= {f.encode() for f in _url_forms(value) | _json_forms(value)}
    return {f for f in forms if f == raw or len(f) >= _MIN_DERIVED}


def secret_parts(value: str) -> list[str]:
    """The value, and the password of a `user:pass` pair, which is a secret on its own."""
    parts = [value]
    if ":" in value:
        password = value.split(":", 1)[1]
        if len(password) >= 8:
            parts.append(password)
    return parts


class Redactor:
    """One compiled matcher over every form of every value (Hyperscan, literal mode)."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        names: dict[bytes, str] = {}
        # Longer values first so a value that contains another is reported under its own name.
        for name, value in sorted(secrets.items(), key=lambda kv: -len(kv[1])):
            if not value:
                continue
            for part in secret_parts(value):
                for form in encodings(part):
                    names.setdefault(form, name)
        self.patterns = list(names)
        self.replacements = [f"[REDACTED:{names[p]}]".encode() for p in self.patterns]
        self.max_len = max((len(p) for p in self.patterns), default=0)
        self.prefixes = frozenset(p[:i] for p in self.patterns for i in range(1, len(p)))
        # Bytes a proper prefix can end with: any other last byte means nothing is held.
        self.prefix_ends = frozenset(prefix[-1] for prefix in self.prefixes)
        self.min_len = min((len(p) for p in self.patterns), default=0)
        self.database: hyperscan.Database | None = None
        if self.patterns:
            self.database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self.database.compile(
                expressions=self.patterns,
                ids=list(range(len(self.patterns))),
                elements=len(self.patterns),
                flags=hyperscan.HS_FLAG_SOM_LEFTMOST,
                literal=True,
            )

    @property
    def empty(self) -> bool:
        return self.database is None

    def held_length(self, data: bytes) -> int:
        """Length of the longest suffix of `data` that is a proper prefix of a pattern."""
        if not data or data[-1] not in self.prefix_ends:
            return 0
        prefixes = self.prefixes
        for length in range(min(self.max_len - 1, len(data)), 0, -1):
            if data[-length:] in prefixes:
                return length
        return 0

    def _matches(self, data: bytes) -> list[tuple[int, int, int]]:
        """Leftmost, then longest, non-overlapping matches as (start, end, pattern id)."""
        found: list[tuple[int, int, int]] = []

        def on_match(pattern_id: int, start: int, end: int, flags: int, context: object) -> None:
            found.append((start, -end, pattern_id))

        assert self.database is not None
        self.database.scan(data, match_event_handler=on_match)
        if not found:
            return []
        found.sort()
        chosen: list[tuple[int, int, int]] = []
        position = 0
        for start, negative_end, pattern_id in found:
            if start >= position:
                chosen.append((start, -negative_end, pattern_id))
                position = -negative_end
        return chosen

    def substitute(self, data: bytes, limit: int | None = None) -> tuple[bytes, int, int]:
        """Replace matches starting before `limit`; return (output, consumed, count)."""
        stop = len(data) if limit is None else limit
        if self.database is None or not data:
            return data[:stop], stop, 0
        out: list[bytes] = []
        position = count = 0
        for start, end, pattern_id in self._matches(data):
            if start >= stop:
                break
            out.append(data[position:start])
            out.append(self.replacements[pattern_id])
            position = end
            count += 1
        if not count:
            return data[:stop], stop, 0
        consumed = max(position, stop)
        out.append(data[position:consumed])
        return b"".join(out), consumed, count

    def redact(self, data: bytes) -> tuple[bytes, int]:
        output, _, count = self.substitute(data)
        return output, count

    def redact_text(self, text: str) -> tuple[str, int]:
        if len(text) * 4 < self.min_len:  # even at 4 bytes a character, too short to match
            return text, 0
        output, count = self.redact(text.encode("utf-8", "surrogateescape"))
        return output.decode("utf-8", "surrogateescape"), count

    def redact_texts(self, texts: list[str]) -> tuple[list[str], int]:
        """`redact_text` of each; one scan over all of them when nothing matches (the rule)."""
        if self.database is None:
            return texts, 0
        # A value inside the joined text is a substring of it: no match there, none in any.
        joined = "\n".join(texts).encode("utf-8", "surrogateescape")
        if not self._matches(joined):
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
    """Per-response state: feed chunks in order, then `finish()`."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.tail = b""
        self.count = 0

    def feed(self, chunk: bytes) -> bytes:
        redactor = self.redactor
        if redactor.database is None:
            return chunk
        data = self.tail + chunk if self.tail else chunk
        cut = len(data) - redactor.held_length(data)
        output, consumed, count = redactor.substitute(data, cut)
        self.tail = data[consumed:]
        self.count += count
        return output

    def finish(self) -> bytes:
        output, count = self.redactor.redact(self.tail)
        self.tail = b""
        self.count += count
        return output
