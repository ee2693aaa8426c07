"""The proxy's HTTP/1.1 client for upstream calls, split as httpcore splits its own:
errors, one request, one connection and what is written on it, one response, the pool of
connections, and the decoding of content codings.

Why not aiohttp's ClientSession: see pool.py. What the rest of the proxy uses is here.
"""

from blindkey.proxy.upstream.errors import (
    BlockedAddressError,
    UnsendableRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResolveError,
    UpstreamTimeout,
)
from blindkey.proxy.upstream.pool import UpstreamPool
from blindkey.proxy.upstream.request import UpstreamRequest
from blindkey.proxy.upstream.response import UpstreamLimits, UpstreamResponse

__all__ = [
    "BlockedAddressError",
    "UnsendableRequest",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamLimits",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamRequest",
    "UpstreamResolveError",
    "UpstreamResponse",
    "UpstreamTimeout",
]
