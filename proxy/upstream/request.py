"""One request to an upstream, as the pool sends it (httpcore's `Request`, for this proxy)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """Where it goes (scheme, host, port: the pool's key, and what the egress policy vetted), what
    the request line and Host header say, and the body.

    `body` is bytes (sent with its length), a stream (sent with `content_length`, or chunked
    without one) or None.
    """

    method: str
    scheme: str
    host: str
    port: int
    host_header: str
    path_query: str
    headers: Iterable[tuple[str, str]] = ()
    body: bytes | AsyncIterable[bytes] | None = None
    content_length: int | None = None

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port
