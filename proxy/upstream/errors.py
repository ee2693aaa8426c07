"""What can go wrong with an upstream call; each maps to one error code (proxy/errors.py)."""

from __future__ import annotations

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
