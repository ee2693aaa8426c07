"""A WebAuthn authenticator in software (P-256, "none" attestation), for the answers a
browser never sends: an assertion signed without user verification, or for another
origin. The broker must refuse those on its own; Chromium's virtual authenticator is
used for everything a browser does send (tests/ui/test_passkeys.py)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import cbor2
import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from webauthn.helpers import bytes_to_base64url as b64

USER_PRESENT, USER_VERIFIED, ATTESTED = 0x01, 0x04, 0x40


class SoftAuthenticator:
    def __init__(self, rp_id: str = "localhost") -> None:
        self.rp_id = rp_id
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(16)
        self.count = 0

    def _cose_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        x, y = numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: x, -3: y})

    def _auth_data(self, flags: int, attested: bytes = b"") -> bytes:
        self.count += 1
        rp_hash = hashlib.sha256(self.rp_id.encode()).digest()
        return rp_hash + bytes([flags]) + self.count.to_bytes(4, "big") + attested

    @staticmethod
    def _client_data(kind: str, options: dict[str, Any], origin: str) -> bytes:
        fields = {"type": kind, "challenge": options["challenge"], "origin": origin}
        return orjson.dumps({**fields, "crossOrigin": False})

    def register(self, options: dict[str, Any], origin: str, *, verified: bool = True) -> Any:
        client = self._client_data("webauthn.create", options, origin)
        cid = self.credential_id
        attested = bytes(16) + len(cid).to_bytes(2, "big") + cid + self._cose_key()
        flags = USER_PRESENT | ATTESTED | (USER_VERIFIED if verified else 0)
        statement = {"fmt": "none", "attStmt": {}, "authData": self._auth_data(flags, attested)}
        return {
            "id": b64(cid), "rawId": b64(cid), "type": "public-key",
            "response": {"clientDataJSON": b64(client),
                         "attestationObject": b64(cbor2.dumps(statement))},
            "clientExtensionResults": {},
        }  # fmt: skip

    def assertion(self, options: dict[str, Any], origin: str, *, verified: bool = True) -> Any:
        client = self._client_data("webauthn.get", options, origin)
        data = self._auth_data(USER_PRESENT | (USER_VERIFIED if verified else 0))
        signature = self.key.sign(data + hashlib.sha256(client).digest(), ec.ECDSA(hashes.SHA256()))
        cid = self.credential_id
        return {
            "id": b64(cid), "rawId": b64(cid), "type": "public-key",
            "response": {"clientDataJSON": b64(client), "authenticatorData": b64(data),
                         "signature": b64(signature), "userHandle": None},
            "clientExtensionResults": {},
        }  # fmt: skip
