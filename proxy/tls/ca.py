"""Proxy mode's local CA: made once by `init`, its key readable only by the proxy's user.

Leaf certificates are minted per host when a program CONNECTs to a host a secret is bound
to, and kept in memory; every leaf shares one key made at start (a leaf key is worth no more
than the CA key beside it, and one key saves an EC key generation per host). The bundle that
`blindkey run` points programs at is the system's CAs plus this one, so a host blindkey
tunnels blind still verifies.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import os
import socket
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from blindkey.config.atomic import locked, write_atomic
from blindkey.config.paths import Paths
from blindkey.proxy.tls.errors import CaError as CaError  # named here too: the CA raises it

CA_YEARS = 10
LEAF_DAYS = 7
# A leaf is minted again this long before it would expire, so none is served stale.
LEAF_RENEW = datetime.timedelta(days=1)
# Clocks disagree: certificates start a little in the past.
BACKDATE = datetime.timedelta(hours=1)
LEAF_CACHE = 4096

Clock = Callable[[], datetime.datetime]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Authority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _ca_subject() -> x509.Name:
    # The user and machine in the name tell two blindkey CAs apart in a trust store.
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "blindkey"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"blindkey local CA ({who})"[:64]),
        ]
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=False, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True,
    crl_sign=True, encipher_only=False, decipher_only=False,
)  # fmt: skip


def new_authority(now: datetime.datetime | None = None) -> Authority:
    now = _now() if now is None else now
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _ca_subject()
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate, key)


def ensure_ca(paths: Paths) -> bool:
    """Make the CA when there is none; True when it was made. A key without its certificate
    (or the reverse) is refused, never silently replaced: programs may already trust it."""
    with locked(paths.lock_file):
        have_key, have_cert = paths.ca_key.exists(), paths.ca_cert.exists()
        if have_key and have_cert:
            return False
        if have_key or have_cert:
            missing = paths.ca_cert if have_key else paths.ca_key
            raise CaError(
                f"{missing} is missing but its pair is there; restore it, or remove "
                f"{paths.ca_key} and {paths.ca_cert} and run `blindkey init` for a new CA "
                "(programs that trusted the old one must be given the new one)"
            )
        authority = new_authority()
        key_pem = authority.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(paths.ca_key, key_pem, mode=0o600)
        write_atomic(paths.ca_cert, authority.pem, mode=0o644)
        return True


def load_ca(paths: Paths) -> Authority:
    try:
        key_pem, cert_pem = paths.ca_key.read_bytes(), paths.ca_cert.read_bytes()
    except FileNotFoundError as exc:
        raise CaError(f"no CA at {exc.filename}: run `blindkey init` to make one") from None
    except PermissionError as exc:
        raise CaError(f"cannot read {exc.filename}: the CA key is the proxy's only") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CaError(f"the CA in {paths.ca_cert.parent} is unreadable: {exc}") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
        key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki)
    ):
        raise CaError(f"{paths.ca_key} is not the key of {paths.ca_cert}")
    return Authority(certificate, key)


def system_bundle() -> bytes:
    """The platform's trusted CAs as PEM, as OpenSSL finds them (SSL_CERT_FILE ignored:
    `run` sets it to our own bundle, which must not feed on itself)."""
    found = ssl.get_default_verify_paths()
    for candidate in (found.openssl_cafile, found.cafile):
        if candidate and os.path.isfile(candidate):
            with contextlib.suppress(OSError):
                return Path(candidate).read_bytes()
    return b""


def bundle(authority: Authority) -> bytes:
    """What `run` points programs at: the system's CAs, then blindkey's (so a host blindkey
    tunnels blind still verifies)."""
    system = system_bundle()
    separator = b"" if not system or system.endswith(b"\n") else b"\n"
    return system + separator + authority.pem


class LeafCache:
    """TLS server contexts per host, each with a leaf certificate signed by the CA."""

    def __init__(self, authority: Authority, runtime_dir: Path, clock: Clock = _now) -> None:
        self._authority = authority
        self._runtime_dir = runtime_dir
        self._clock = clock
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def context(self, host: str) -> ssl.SSLContext:
        now = self._clock()
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and cached[1] - LEAF_RENEW > now:
                self._contexts.move_to_end(host)
                return cached[0]
        certificate = self.leaf(host, now)
        context = self._server_context(certificate)
        with self._lock:
            self._contexts[host] = (context, certificate.not_valid_after_utc)
            while len(self._contexts) > LEAF_CACHE:
                self._contexts.popitem(last=False)
        return context

    def leaf(self, host: str, now: datetime.datetime) -> x509.Certificate:
        try:
            name: x509.GeneralName = x509.IPAddress(ip_address(host.strip("[]")))
        except ValueError:
            name = x509.DNSName(host)
        issuer = self._authority.certificate
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(issuer.subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([name]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._authority.key.public_key()
                ),
                critical=False,
            )
            .sign(self._authority.key, hashes.SHA256())
        )

    def _server_context(self, certificate: x509.Certificate) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # HTTP/1.1 only: a client that offers nothing else is not spoken to in h2.
        context.set_alpn_protocols(["http/1.1"])
        chain = certificate.public_bytes(serialization.Encoding.PEM)
        key = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # ssl loads a chain only from a file: one in the private runtime directory, gone as
        # soon as it is read.
        fd, name = tempfile.mkstemp(dir=self._runtime_dir, prefix=".leaf-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(key + chain)
            context.load_cert_chain(name)
        finally:
            os.unlink(name)
        return context
