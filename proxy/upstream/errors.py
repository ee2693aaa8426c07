"""What can go wrong with an upstream call; each maps to one error code (proxy/errors.py)."""

from __future__ import annotations

from collections.abc import Iterable

from blindkey.config.errors import BlindkeyError


class UpstreamError(BlindkeyError):
    """The upstream could not be reached or did not answer properly; the message is safe
    to show (it names no secret and no path)."""


class UpstreamResolveError(UpstreamError):
    pass


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamProtocolError(UpstreamError):
    pass


class StaleConnection(UpstreamError):
    """A pooled connection was closed by the server before answering a byte."""


class UnsendableRequest(UpstreamError):
    """The request cannot be written as HTTP/1.1 (a line break or control character where
    none may be): the caller's fault, and nothing was sent."""


class BlockedAddressError(UpstreamError):
    """Every address a hostname resolved to is one blindkey will not dial."""

    def __init__(self, host: str, addresses: Iterable[str]) -> None:
        super().__init__(f"{host} resolves only to blocked addresses")
        self.host = host
        self.addresses = tuple(addresses)
