"""The upstream TLS context (proxy/trust.py): aiohttp's verified default, loaded once at its
import, is the proxy's when no extra CA is configured; it verifies as a context of the
proxy's own did (a real handshake against an untrusted certificate and a wrong host name
fails), and a configured ca_file gets a context of its own, the shared one untouched."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp.connector
import pytest
import trustme

from blindkey.proxy.trust import SHARED_NAME, upstream_context, verifies

HOST = "upstream.test"


def test_aiohttp_still_makes_the_verified_default_the_proxy_shares() -> None:
    shared = getattr(aiohttp.connector, SHARED_NAME, None)
    assert isinstance(shared, ssl.SSLContext), f"aiohttp {aiohttp.__version__} moved it"
    assert verifies(shared)
    fresh = ssl.create_default_context()
    assert shared.cert_store_stats()["x509_ca"] == fresh.cert_store_stats()["x509_ca"]


def test_without_an_extra_ca_the_upstream_context_is_the_shared_one() -> None:
    assert upstream_context("") is getattr(aiohttp.connector, SHARED_NAME)


def test_an_extra_ca_gets_a_context_of_its_own(tmp_path: Path) -> None:
    shared: ssl.SSLContext = getattr(aiohttp.connector, SHARED_NAME)
    before = shared.cert_store_stats()
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    own = upstream_context(str(ca_file))
    assert own is not shared and verifies(own)
    assert own.cert_store_stats()["x509_ca"] == before["x509_ca"] + 1
    assert shared.cert_store_stats() == before


def test_a_default_that_would_not_verify_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stands for a future aiohttp whose default stopped checking: a fault that cannot be had
    # for real with the aiohttp installed here, so its context is replaced.
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    monkeypatch.setattr(aiohttp.connector, SHARED_NAME, lax)
    context = upstream_context("")
    assert context is not lax and verifies(context)


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS listener on port 0 with a certificate for HOST from a CA nobody trusts; the
    CA's file."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    try:
        yield server.sockets[0].getsockname()[1], ca_file
    finally:
        server.close()
        await server.wait_closed()


async def handshake(port: int, context: ssl.SSLContext, name: str) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name)
    writer.close()


async def test_the_shared_context_refuses_an_untrusted_certificate(
    tls_server: tuple[int, Path],
) -> None:
    port, _ = tls_server
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(port, upstream_context(""), HOST)


async def test_the_extra_ca_is_trusted_for_its_host_name_only(
    tls_server: tuple[int, Path],
) -> None:
    port, ca_file = tls_server
    context = upstream_context(str(ca_file))
    await handshake(port, context, HOST)
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(port, context, "other.test")
