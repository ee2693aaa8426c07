"""Proxy mode's CA error, apart from the CA itself (ca.py): the request stages name it on
every proxy's path, and the CA's module loads cryptography's X.509 support, which only a
proxy that intercepts a tunnel needs (loaded at the first CONNECT)."""

from __future__ import annotations

from blindkey.config.errors import BlindkeyError


class CaError(BlindkeyError):
    """The CA files are missing, unreadable or do not belong together."""
