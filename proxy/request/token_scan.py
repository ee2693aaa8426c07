"""The agent's token, kept from a route's upstream in every spelling.

A route takes the token from where an SDK puts its key and removes it there. An agent (or
an SDK set up for another API) may put it anywhere else as well: in a cookie, after
`Token `, quoted, as the password of Basic in a custom header, in a query parameter's
text, in a JSON body. Any place that is not one the route reads is refused rather than
guessed at: the token is looked for raw, percent-encoded (up to three rounds), JSON
`\\u`-escaped, hex and base64 (standard and URL-safe, any alignment), the spellings
redact/redactor.py knows for values. A token the caller did not present is still found when
it is written out (any `bk_` token, raw or decoded); its base64 and hex forms are found
only for the tokens presented.

A streamed body is scanned as it passes, holding back the last HOLD bytes until the next
piece arrives, so no spelling shorter than that is ever completed upstream before it is
seen; the upstream then gets a cut body and the agent a 400.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import AsyncIterator, Iterable
from urllib.parse import unquote_to_bytes

from blindkey.broker.agents import TOKEN_PREFIX
from blindkey.proxy.errors import ProxyError

# Any agent token written out whole. The literal prefix first keeps the search fast; the
# boundaries (checked in _any_token) keep a run of base64url text, a JWT in a cookie, from
# matching by chance.
ANY_TOKEN = re.compile(rb"%s[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])" % re.escape(TOKEN_PREFIX.encode()))
_TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# A spelling is looked for by a short piece of it first: long needles cost more to search.
_PIECE = 12
_JSON_ESCAPE = re.compile(rb"\\u00([0-7][0-9a-fA-F])")
PERCENT_ROUNDS = 3
# Bytes of a streamed body held back: the longest spelling looked for (a token of up to 46
# characters, each written as `\u00XX` or as three rounds of percent-encoding).
HOLD = 8 * 46


def _base64_cores(token: bytes) -> set[bytes]:
    """The base64 characters of `token` whatever comes before and after it."""
    cores = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + token)
        start, end = (8 * shift + 5) // 6, (8 * (shift + len(token))) // 6
        core = encoded[start:end]
        cores |= {core, core.replace(b"+", b"-").replace(b"/", b"_")}
    return cores


def _any_token(view: bytes) -> bool:
    for match in ANY_TOKEN.finditer(view):
        start = match.start()
        if start == 0 or view[start - 1] not in _TOKEN_CHARS:
            return True
    return False


def _views(data: bytes) -> Iterable[bytes]:
    """`data` and what an upstream could decode it into."""
    yield data
    view = data
    for _ in range(PERCENT_ROUNDS):
        if b"%" not in view:
            break
        view = unquote_to_bytes(view)
        yield view
    if b"\\" in data:
        yield _JSON_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data).replace(b"\\/", b"/")


class TokenScan:
    """Finds the presented tokens (and any raw `bk_` token) in text bound for upstream."""

    def __init__(self, tokens: Iterable[str]) -> None:
        presented = sorted({t.encode("utf-8") for t in tokens if t})
        exact = {c for t in presented for c in _base64_cores(t)} | set(presented)
        self.exact = [(s[:_PIECE], s) for s in sorted(exact)]
        self.hex = [(h[:_PIECE], h) for h in (t.hex().encode() for t in presented)]

    def found(self, data: bytes) -> bool:
        return any(self._found_in(view) for view in _views(data))

    def _found_in(self, view: bytes) -> bool:
        if _any_token(view):
            return True
        if any(piece in view and whole in view for piece, whole in self.exact):
            return True
        if self.hex:
            lowered = view.lower()
            return any(piece in lowered and whole in lowered for piece, whole in self.hex)
        return False

    def found_text(self, text: str) -> bool:
        # Every spelling is ASCII: other characters only need to stay out of a match.
        return self.found(text.encode("ascii", "replace"))

    def check(self, parts: Iterable[tuple[str, str]]) -> None:
        """Refuse naming the first of `parts` (where, text) that carries a token; the texts
        are scanned as one (joined by a line break, which no spelling holds)."""
        listed = list(parts)
        if not self.found_text("\n".join(text for _, text in listed)):
            return
        for where, text in listed:
            if self.found_text(text):
                raise refusal(where)
        raise refusal("the request")  # not reached: a spelling holds no line break

    async def guard(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks` passed on, each byte only once everything up to HOLD bytes past it has
        been scanned with it; raises the refusal instead of passing a spelling on."""
        held = b""
        async for chunk in chunks:
            window = held + chunk
            if self.found(window):
                raise refusal("the body")
            cut = max(0, len(window) - HOLD)
            if cut:
                yield window[:cut]
            held = window[cut:]
        if held:
            yield held


@functools.lru_cache(maxsize=256)
def scan_for(tokens: tuple[str, ...]) -> TokenScan:
    """The scan for these presented tokens; an agent sends the same token call after call."""
    return TokenScan(tokens)


def refusal(where: str) -> ProxyError:
    return ProxyError(
        "bad_request",
        f"the agent token is in {where}: a route takes it only from X-AS-Agent-Token, "
        "Authorization or the route's own header or query parameter, and never sends it "
        f"upstream; remove it from {where}",
    )
