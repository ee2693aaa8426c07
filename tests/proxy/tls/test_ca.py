"""Proxy mode's CA: made once, private key 0600, refused when half of it is missing; leaves
that a real TLS client verifies against the CA alone and against the bundle `run` hands out."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from blindkey.config.paths import Paths, ensure_dirs
from blindkey.proxy.tls.ca import (
    LEAF_DAYS,
    CaError,
    LeafCache,
    bundle,
    ensure_ca,
    load_ca,
    system_bundle,
)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    found = Paths(config_dir=tmp_path, state_dir=tmp_path, runtime_dir=tmp_path / "run")
    ensure_dirs(found)
    return found


def test_made_once_with_a_private_key(paths: Paths) -> None:
    assert ensure_ca(paths) is True
    first = paths.ca_cert.read_bytes()
    assert ensure_ca(paths) is False
    assert paths.ca_cert.read_bytes() == first
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    authority = load_ca(paths)
    constraints = authority.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca and constraints.value.path_length == 0


@pytest.mark.parametrize("lost", ["ca_key", "ca_cert"])
def test_half_a_ca_is_refused_not_replaced(paths: Paths, lost: str) -> None:
    ensure_ca(paths)
    kept = paths.ca_cert if lost == "ca_key" else paths.ca_key
    before = kept.read_bytes()
    getattr(paths, lost).unlink()
    with pytest.raises(CaError, match="missing but its pair is there"):
        ensure_ca(paths)
    assert kept.read_bytes() == before


def test_a_key_that_is_not_the_certificates_is_refused(paths: Paths, tmp_path: Path) -> None:
    ensure_ca(paths)
    other = Paths(config_dir=tmp_path / "o", state_dir=tmp_path / "o", runtime_dir=tmp_path / "o")
    ensure_dirs(other)
    ensure_ca(other)
    paths.ca_key.write_bytes(other.ca_key.read_bytes())
    with pytest.raises(CaError, match="is not the key of"):
        load_ca(paths)
    paths.ca_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    with pytest.raises(CaError, match="unreadable"):
        load_ca(paths)


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str) -> str:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname=host
        )
        assert await reader.read() == b"ok"
        ssl_object = writer.get_extra_info("ssl_object")
        protocol = ssl_object.selected_alpn_protocol()
        writer.close()
        return str(protocol)
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("host", ["api.example.test", "127.0.0.1", "::1"])
async def test_a_leaf_verifies_against_the_ca(paths: Paths, host: str) -> None:
    ensure_ca(paths)
    cache = LeafCache(load_ca(paths), paths.runtime_dir)
    client = ssl.create_default_context(cafile=str(paths.ca_cert))
    client.set_alpn_protocols(["h2", "http/1.1"])
    assert await _handshake(cache.context(host), client, host) == "http/1.1"
    # The leaf's key file was removed once loaded.
    assert not list(paths.runtime_dir.glob(".leaf-*"))


async def test_a_leaf_for_one_host_does_not_pass_for_another(paths: Paths) -> None:
    ensure_ca(paths)
    cache = LeafCache(load_ca(paths), paths.runtime_dir)
    client = ssl.create_default_context(cafile=str(paths.ca_cert))
    with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
        await _handshake(cache.context("api.example.test"), client, "evil.example.test")


async def test_the_bundle_trusts_the_system_and_blindkey(paths: Paths) -> None:
    ensure_ca(paths)
    authority = load_ca(paths)
    trusted = paths.state_dir / "bundle.pem"
    trusted.write_bytes(bundle(authority))
    data = trusted.read_bytes()
    assert data.startswith(system_bundle()) and data.endswith(authority.pem)
    assert data.count(b"BEGIN CERTIFICATE") > 1  # the system's are there too
    cache = LeafCache(authority, paths.runtime_dir)
    client = ssl.create_default_context(cafile=str(trusted))
    assert await _handshake(cache.context("api.example.test"), client, "api.example.test")


def test_leaves_are_cached_and_renewed_before_they_expire(paths: Paths) -> None:
    ensure_ca(paths)
    now = [datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)]
    cache = LeafCache(load_ca(paths), paths.runtime_dir, clock=lambda: now[0])
    first = cache.context("api.example.test")
    assert cache.context("api.example.test") is first
    now[0] += datetime.timedelta(days=LEAF_DAYS - 1, seconds=1)
    assert cache.context("api.example.test") is not first
