"""The TLS client context upstream calls verify with, built once per process.

Loading the system's CA bundle into a context costs 30-50 ms of CPU, on the proxy's way to
serving. aiohttp, which the proxy imports for its server, already loads it at import into
its own verified default context (it makes two, verified and not, in aiohttp.connector).
Without an extra CA that default is the proxy's too: the same verification as a context
of our own (the system's CAs, certificates and host names checked), the bundle loaded
once. Nothing mutates it: with [proxy] ca_file the proxy builds a context of its own, and
a default that does not verify as ours must is never taken.
"""

from __future__ import annotations

import ssl

import aiohttp.connector

# aiohttp's verified default (aiohttp.connector, 3.x); tests/proxy/test_trust.py pins it.
SHARED_NAME = "_SSL_CONTEXT_VERIFIED"


def upstream_context(ca_file: str) -> ssl.SSLContext:
    """The system's trust store, plus `ca_file` when one is configured."""
    if not ca_file:
        shared = getattr(aiohttp.connector, SHARED_NAME, None)
        if isinstance(shared, ssl.SSLContext) and verifies(shared):
            return shared
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


def verifies(context: ssl.SSLContext) -> bool:
    """Whether a context checks what ssl.create_default_context() checks: a certificate
    chained to the system's CAs, for the host name asked, over TLS 1.2 or later."""
    return (
        context.verify_mode == ssl.CERT_REQUIRED
        and context.check_hostname
        and context.minimum_version >= ssl.TLSVersion.TLSv1_2
        and context.cert_store_stats()["x509_ca"] > 0
    )
