"""Stripping every encoding of every secret value from what flows back to the agent.

A `Redactor` is built once per secret set; each response gets a `RedactStream` that
is fed chunk by chunk and holds back a tail of a fixed length, whatever its bytes are:
holding back only what could begin a value told the agent which bytes could.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from blindkey.config.model import MAX_VALUE_BYTES
from blindkey.redact.forms import encodings as encodings  # the forms, for their tests
from blindkey.redact.shards import NUL_ANCHOR as NUL_ANCHOR  # for its tests
from blindkey.redact.shards import ShardStore, Span, build_shards, shard_count, shard_of
from blindkey.redact.views import LINE_BREAKS, WIDEST_ESCAPE, View, active_views

# The stream's hold never falls below this, and is a power of two: all it tells an agent
# about the values is the power of two above the longest form's length.
HOLD_FLOOR = 256
# A stream's held tail goes out as later chunks push it out, at the end, or this many
# seconds after it began to be held: a constant, so when bytes arrive tells the agent
# nothing about them.
# Under the gap between an LLM's streamed tokens (tens of ms) and far under what a person
# notices; long enough that a write the network split in two is usually joined first.
FLUSH_DELAY = 0.02


def _rounded(longest: int) -> int:
    return max(HOLD_FLOOR, 1 << max(longest - 1, 0).bit_length())


def _merge(spans: list[Span]) -> list[Span]:
    """Overlapping matches become one replacement, named after the leftmost, longest one
    (of one span found for two values, the longer value's)."""
    spans.sort(key=lambda span: (span[0], -span[1], span[2]))
    merged: list[Span] = []
    for span in spans:
        if merged and span[0] < merged[-1][1]:
            if span[1] > merged[-1][1]:
                start, _, rank, replacement = merged[-1]
                merged[-1] = (start, span[1], rank, replacement)
            continue
        merged.append(span)
    return merged


def _removes_breaks_only(data: bytes) -> bool:
    """Whether the line-break view of `data` is `data` with its CRs and LFs taken out, and
    differs from it (so it is scanned)."""
    return b"\\" not in data and (b"\n" in data or b"\r" in data)


class Redactor:
    """Every form of every value, matched by Hyperscan in literal mode, in shards of a few
    dozen values each (see shards.py): a rebuild compiles only the shards that changed.

    Memory and build time grow with the total size of the forms, not with its square:
    patterns longer than ANCHOR are found by their first ANCHOR bytes and confirmed by
    comparison.
    """

    def __init__(self, secrets: Mapping[str, str], cache: ShardStore | None = None) -> None:
        present = [(name, value) for name, value in secrets.items() if value]
        for name, value in present:
            if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
                raise ValueError(f"{name}: values over {MAX_VALUE_BYTES} bytes cannot be redacted")
        count = shard_count(len(present))
        groups: list[list[tuple[str, str]]] = [[] for _ in range(count)]
        # Longer values first so a value that contains another is reported under its own name.
        for name, value in sorted(present, key=lambda kv: (-len(kv[1]), kv[0])):
            groups[shard_of(name, count)].append((name, value))
        self.shards = build_shards([tuple(group) for group in groups if group], cache)
        self.max_len = max((shard.longest for shard in self.shards), default=0)
        self.min_len = min((shard.shortest for shard in self.shards), default=0)
        self.hold = _rounded(self.max_len)
        self.view_hold = _rounded(max((shard.longest_plain for shard in self.shards), default=0))

    def hold_length(self, size: int, views: tuple[View, ...]) -> int:
        """How many trailing bytes of `size` a stream keeps back: enough for any form that
        is not yet whole, in any active view. A function of the size, the views active on
        the data and the longest form's length only, never of what the bytes are, so what
        is held and for how long tells the agent nothing about whether they begin a value.
        """
        width = max((view.width for view in views), default=0)
        return min(size, max(self.hold, width * self.view_hold) + WIDEST_ESCAPE)

    def _literal_matches(self, data: bytes, with_breaks_only: bool = False) -> list[Span]:
        spans: list[Span] = []
        for shard in self.shards:
            if shard.breaks or not with_breaks_only:
                spans += shard.matches(data)
        return spans

    def _matches(self, data: bytes, views: tuple[View, ...] | None = None) -> list[Span]:
        """Every value in every spelling, as merged, non-overlapping source spans."""
        views = active_views(data) if views is None else views
        # With raw line breaks and no backslash, the line-break view only removes bytes: a
        # form without a break found in the data is found there too, at the same source
        # span. Scanning the data itself only for forms with breaks halves the scans of
        # base64 in lines (the bench's big body: two full scans a chunk).
        only_breaks = LINE_BREAKS in views and _removes_breaks_only(data)
        spans = self._literal_matches(data, only_breaks)
        for view in views:
            rendered = view.render(data)
            if rendered == data:
                continue
            found = self._literal_matches(rendered)
            if found:
                where = view.mapping(data)
                spans += [
                    (where.source_start(s), where.source_end(e), r, m) for s, e, r, m in found
                ]
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
        if not self.shards or len(data) <= begin:
            return data[begin:stop], max(stop, begin), 0
        out: list[bytes] = []
        position, count = begin, 0
        for start, end, _, replacement in self._matches(data, views):
            if start >= stop:
                break
            if end <= position:
                continue
            out.append(data[position:start])
            out.append(replacement)
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
        if not self.shards:
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
        if not redactor.shards:
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
