"""Undoing an answer's Content-Encoding, every layer, so every byte is scanned.

Content-Encoding is a list (RFC 9110 §8.4): every header line, comma-separated, in the
order the codings were applied. Each layer is decoded, the last applied first; a layer
blindkey cannot decode is refused, wherever it stands in the list, since an unscanned
body could carry a value to the agent. A gzip body may hold several members one after
another (RFC 1952 §2.2): all are decoded, not only the first.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from blindkey.proxy.upstream.errors import UpstreamProtocolError

# What blindkey offers upstream in Accept-Encoding, and decodes.
DECODABLE = ("gzip", "deflate")
# More layers than this is not an answer anyone means to send.
MAX_LAYERS = 4
# Decoded output is produced in steps of at most this much, so a bomb stays bounded.
STEP = 2**16


class DecodingError(UpstreamProtocolError):
    """The body does not decode, or uses a coding blindkey cannot scan."""


def codings(header_values: Iterable[str]) -> list[str]:
    """The codings applied, in order, from every Content-Encoding line; identity dropped."""
    listed = [item.strip().lower() for value in header_values for item in value.split(",")]
    return [coding for coding in listed if coding and coding != "identity"]


def undecodable(applied: list[str]) -> str | None:
    """The first coding blindkey cannot undo, or None when it can undo them all."""
    if len(applied) > MAX_LAYERS:
        return ", ".join(applied)
    for coding in applied:
        if coding not in DECODABLE:
            return coding
    return None


def _decompressor(coding: str, first: bytes) -> Any:
    if coding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    # "deflate" is meant to be zlib-wrapped; some servers send it raw.
    wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and ((first[0] << 8) | first[1]) % 31 == 0
    return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)


class _Layer:
    """One coding, decoded incrementally; gzip members one after another."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.decoder: Any = None

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self.decoder is None:
                self.decoder = _decompressor(self.coding, data)
            try:
                out = self.decoder.decompress(data, STEP)
            except zlib.error:
                raise DecodingError(f"sent a {self.coding} body that does not decode") from None
            if self.decoder.eof:
                data = self.decoder.unused_data
                if data and self.coding != "gzip":
                    raise DecodingError(f"sent bytes after the end of its {self.coding} body")
                self.decoder = None  # the next gzip member, if bytes follow
            else:
                data = self.decoder.unconsumed_tail
            if out:
                yield out

    def finish(self) -> Iterator[bytes]:
        if self.decoder is None:
            return  # nothing arrived, or the body ended at the end of a member
        try:
            tail = self.decoder.flush()  # feed() left no input behind, only buffered output
        except zlib.error:
            raise DecodingError(f"sent a {self.coding} body that does not decode") from None
        if tail:
            yield tail
        if not self.decoder.eof:
            raise DecodingError(f"sent a {self.coding} body that ends early")


class Decoder:
    """Feed the body as it arrives; get it back with every layer undone."""

    def __init__(self, applied: list[str]) -> None:
        # The last coding applied is the first to undo.
        self.layers = [_Layer(coding) for coding in reversed(applied)]

    def _through(self, index: int, chunks: Iterable[bytes]) -> Iterator[bytes]:
        if index == len(self.layers):
            yield from chunks
            return
        layer = self.layers[index]
        for chunk in chunks:
            yield from self._through(index + 1, layer.feed(chunk))

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, (data,))

    def finish(self) -> Iterator[bytes]:
        for index, layer in enumerate(self.layers):
            yield from self._through(index + 1, layer.finish())
