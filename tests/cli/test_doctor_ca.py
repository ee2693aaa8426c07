"""`doctor` checks proxy mode's CA where `init` puts it: the key private, the pair one,
and more than 30 days left (programs trust the certificate: a new one must be handed out)."""

from __future__ import annotations

import datetime

import pytest
from cryptography.hazmat.primitives import serialization

from blindkey.cli.doctor import Finding, diagnose
from blindkey.config.paths import Paths
from blindkey.proxy.tls.ca import CA_YEARS, Authority, ensure_ca, new_authority


def finding(paths: Paths) -> Finding:
    (found,) = [f for f in diagnose(paths) if f.check == "local CA"]
    return found


def write(paths: Paths, key_of: Authority, cert_of: Authority) -> None:
    key = key_of.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    paths.ca_key.write_bytes(key)
    paths.ca_key.chmod(0o600)
    paths.ca_cert.write_bytes(cert_of.pem)


def made_ago(days: float) -> Authority:
    """A CA made so long ago that it has `CA_YEARS` years minus `days` behind it."""
    now = datetime.datetime.now(datetime.UTC)
    return new_authority(now - datetime.timedelta(days=365 * CA_YEARS - days))


def test_the_ca_init_makes_passes(home: Paths) -> None:
    ensure_ca(home)
    found = finding(home)
    assert found.status == "ok" and "pair matches" in found.detail, found


def test_a_ca_key_others_can_read_fails(home: Paths) -> None:
    ensure_ca(home)
    home.ca_key.chmod(0o644)
    found = finding(home)
    assert found.status == "fail" and str(home.ca_key) in found.detail


def test_a_key_without_its_certificate_fails(home: Paths) -> None:
    ensure_ca(home)
    home.ca_cert.unlink()
    found = finding(home)
    assert found.status == "fail" and "blindkey init" in found.detail


def test_a_key_of_another_ca_fails(home: Paths) -> None:
    write(home, new_authority(), new_authority())
    found = finding(home)
    assert found.status == "fail" and "is not the key of" in found.detail


@pytest.mark.parametrize(("days", "status"), [(10, "warn"), (-1, "fail"), (40, "ok")])
def test_time_left(home: Paths, days: float, status: str) -> None:
    authority = made_ago(days)
    write(home, authority, authority)
    found = finding(home)
    assert found.status == status, found
    if status != "ok":
        assert "blindkey init" in found.detail
