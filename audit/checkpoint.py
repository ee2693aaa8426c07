"""Signed checkpoints: every CHECKPOINT_EVERY records and at rotation, the chain's head is
signed with an Ed25519 key (`event: checkpoint`), so a copy of the audit (shipped to a SIEM,
exported, printed by `proxy logs --json`) can be checked by anyone holding the public key,
without the HMAC key: `audit verify --file`.

The HMAC `chain` cannot be checked without its key, so each record also carries `hash`, a
keyless link: SHA-256 of the previous record's `hash` (hex), a newline, and the record as
JSON without its `hash` and `chain` (orjson's compact form, fields in the order written).
A checkpoint signs the head (`seq`, `hash`, and the HMAC `chain` beside it): the records up
to it must hash to exactly that head, so an edit, a removal or a reordering before it shows,
even one whose hashes were rewritten to match.

Keys: `checkpoint.key` (PKCS#8 PEM, 0600: only the audit's writer signs) and
`checkpoint.pub` (SubjectPublicKeyInfo PEM, 0644: give it to whoever checks copies), beside
the audit. Made by the first writer that opens the audit. A writer that cannot read the
private key (another user's) writes records without checkpoints; the next one that can
signs the head it finds.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from blindkey.audit.record import rfc3339

PRIVATE_FILE = "checkpoint.key"
PUBLIC_FILE = "checkpoint.pub"
CHECKPOINT_EVERY = 1000
EVENT = "checkpoint"
_MESSAGE = "blindkey audit checkpoint v1\nseq {seq}\nhash {hash}\nchain {chain}\n"


def message(seq: int, hash_: str, chain: str) -> bytes:
    """What a checkpoint's signature covers (documented: any Ed25519 tool can check it)."""
    return _MESSAGE.format(seq=seq, hash=hash_, chain=chain).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def due(before: int, after: int, every: int) -> bool:
    """Whether records seq before+1..after crossed a multiple of `every`."""
    return every > 0 and before // every != after // every


class Signer:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.key_id = key_id(private.public_key())

    def record(self, seq: int, hash_: str, chain: str, cause: str) -> dict[str, Any]:
        """The checkpoint record for the head (seq, hash, chain), to be sealed after it."""
        signature = self.private.sign(message(seq, hash_, chain))
        return {
            "ts": rfc3339(time.time()),
            "event": EVENT,
            "head": {"seq": seq, "hash": hash_, "chain": chain},
            "cause": cause,
            "key_id": self.key_id,
            "signature": base64.b64encode(signature).decode(),
        }


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # the umask must not narrow the public key's mode
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    finally:
        os.close(fd)


def _create(audit_dir: Path) -> None:
    private = Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The public half first: a private key without it would sign what no one can check.
    public_tmp = audit_dir / f".{PUBLIC_FILE}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        public_tmp.unlink()
    _write_new(public_tmp, public_pem, 0o644)
    try:
        _write_new(audit_dir / PRIVATE_FILE, private_pem, 0o600)
    except FileExistsError:
        public_tmp.unlink()  # another writer made its pair a moment ago: keep that one
        return
    os.replace(public_tmp, audit_dir / PUBLIC_FILE)


def load_signer(audit_dir: Path, *, create: bool = True) -> Signer | None:
    """The audit's signer; made on first use when `create`. None when this process cannot
    read the private key (in the hardened deployment only the proxy's user can)."""
    path = audit_dir / PRIVATE_FILE
    if create and not path.exists():
        with contextlib.suppress(FileExistsError):
            _create(audit_dir)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, PermissionError):
        return None
    private = serialization.load_pem_private_key(data, password=None)
    if not isinstance(private, Ed25519PrivateKey):
        return None
    return Signer(private)


class PublicKeyError(ValueError):
    """A public key file that cannot be used."""


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PublicKeyError(f"cannot read the public key {path}: {exc.strerror}") from exc
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise PublicKeyError(f"{path} is not a PEM public key") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise PublicKeyError(f"{path} is not an Ed25519 public key")
    return public


def signature_ok(public: Ed25519PublicKey, record: dict[str, Any]) -> bool:
    """Whether a checkpoint record's signature covers its head under `public`."""
    head = record.get("head")
    signature = record.get("signature")
    if not isinstance(head, dict) or not isinstance(signature, str):
        return False
    seq, hash_, chain = head.get("seq"), head.get("hash"), head.get("chain")
    if not (isinstance(seq, int) and isinstance(hash_, str) and isinstance(chain, str)):
        return False
    try:
        public.verify(base64.b64decode(signature, validate=True), message(seq, hash_, chain))
    except (InvalidSignature, ValueError):
        return False
    return True
