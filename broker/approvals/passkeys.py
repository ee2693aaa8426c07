"""Approvers' passkeys: WebAuthn credentials enrolled with a TOTP code of their approver,
and assertions that approve one pending request.

The broker decides; `blindkey ui` only relays what the browser made. An assertion is
worth one approval of one request: its challenge is H(nonce || the request's canonical
fields), the nonce kept here and spent on the first answer, right or wrong. So a UI
process that is taken over cannot approve without a fresh assertion from the approver's
authenticator, nor turn one made for request A into an approval of request B.

The credentials and the outstanding challenges live in `passkeys.bin`, sealed with the
vault key like the approvals file (0600, the broker's user's): the agent's user can
neither read them nor slip a credential of its own in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from blindkey.broker.approvals.codes import CodeRefused, locked_until
from blindkey.broker.approvals.model import ApprovalsState
from blindkey.broker.approvals.pending import Pending
from blindkey.broker.approvals.service import Approvals
from blindkey.broker.vault import VaultError, read_sealed, write_sealed
from blindkey.config.atomic import locked
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import Settings
from blindkey.config.paths import Paths

RP_ID = "localhost"
RP_NAME = "blindkey"
# The page of `blindkey ui` as the browser sees it: WebAuthn takes no IP address as RP ID,
# so passkeys work on http://localhost:PORT (a secure context without TLS).
ORIGIN = re.compile(r"http://localhost:[0-9]{1,5}")
# How long a challenge may be answered: an enrolment, an approval.
TTL = {"register": 300.0, "approve": 120.0}
MAX_CHALLENGES = 200
_MAGIC = b"BKP1"
_DOMAIN = b"blindkey passkey approval v1\x00"
Params = dict[str, Any]


def passkeys_file(paths: Paths) -> Path:
    return paths.state_dir / "passkeys.bin"


def binding(pending: Pending, nonce: bytes) -> bytes:
    """The challenge of an approval: it names what is approved, so an assertion for one
    request does not verify for any other (another id, agent, secret, host or method)."""
    fields = {
        "approval_id": pending.id, "agent": pending.agent, "secret": pending.secret,
        "env": pending.env, "method": pending.method, "scheme": pending.scheme,
        "host": pending.host, "port": pending.port, "path": pending.path,
    }  # fmt: skip
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(_DOMAIN + nonce + canonical).digest()


class PasskeyFile:
    """passkeys.bin under its own lock; taken inside the approvals file's lock, never
    around it."""

    def __init__(self, paths: Paths) -> None:
        self.path = passkeys_file(paths)
        self.key_path = paths.vault_key
        self.lock_path = paths.state_dir / "passkeys.lock"

    def load(self) -> dict[str, Any]:
        try:
            data = read_sealed(self.path, self.key_path, _MAGIC, "passkeys file")
        except VaultError as exc:
            raise BlindkeyError(f"{exc}: no passkey can be checked until it is fixed") from exc
        data = data or {}
        data.setdefault("credentials", [])
        data.setdefault("challenges", [])
        return data

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, Any]]:
        with locked(self.lock_path):
            data = self.load()
            before = orjson.dumps(data)
            yield data
            if orjson.dumps(data) != before:
                write_sealed(self.path, self.key_path, _MAGIC, data)


def _take(data: dict[str, Any], kind: str, key: str, now: float) -> dict[str, Any]:
    """The live challenge of `kind` for `key`, removed: each is answered once."""
    data["challenges"] = [c for c in data["challenges"] if now - c["created"] < TTL[c["kind"]]]
    for challenge in data["challenges"]:
        if (challenge["kind"], challenge["key"]) == (kind, key):
            data["challenges"].remove(challenge)
            return dict(challenge)
    raise CodeRefused(
        "reused", "", f"no open passkey challenge for {key}: each works once and lapses "
        f"after {int(TTL[kind])}s; start again"
    )  # fmt: skip


def _offer(
    data: dict[str, Any], kind: str, key: str, challenge: bytes, now: float, **more: Any
) -> None:
    kept = [c for c in data["challenges"] if (c["kind"], c["key"]) != (kind, key)]
    kept.append({"kind": kind, "key": key, "challenge": bytes_to_base64url(challenge),
                 "created": now, **more})  # fmt: skip
    data["challenges"] = kept[-MAX_CHALLENGES:]


def _origin(origin: str | None) -> str:
    if origin is None or not ORIGIN.fullmatch(origin):
        raise BlindkeyError(f"passkeys are used from http://localhost:PORT, not {origin!r}")
    return origin


def _usable(state: ApprovalsState, credential: dict[str, Any]) -> bool:
    """Whether the credential's approver is active and is the one it was enrolled for: an
    approver removed and enrolled again under the same name does not inherit passkeys."""
    record = state.approvers.get(credential["approver"])
    return record is not None and record.active and record.created == credential["since"]


def _credential_id(credential: object) -> str:
    if not isinstance(credential, dict) or not isinstance(credential.get("id"), str):
        raise BlindkeyError("malformed passkey answer: no credential id")
    return str(credential["id"])


class Passkeys:
    def __init__(self, approvals: Approvals) -> None:
        self.approvals = approvals
        self.file = PasskeyFile(approvals.paths)

    def listed(self) -> list[dict[str, Any]]:
        self.approvals.load()
        return [
            {"approver": c["approver"], "id": c["id"][:16], "created": c["created"]}
            for c in self.file.load()["credentials"]
            if _usable(self.approvals.state, c)
        ]

    # --- enrolment: a TOTP code first, then the authenticator's attestation -------------

    def register_begin(self, approver: str | None, code: str | None) -> dict[str, Any]:
        core = self.approvals

        def work(state: ApprovalsState) -> dict[str, Any]:
            name = core.pick(state, approver)
            core.verify(state, name, code, f"enrol a passkey for {name}")
            challenge = os.urandom(32)
            with self.file.editing() as data:
                owned = [c for c in data["credentials"] if c["approver"] == name]
                since = state.approvers[name].created
                _offer(data, "register", name, challenge, core.clock(), since=since)
            options = generate_registration_options(
                rp_id=RP_ID, rp_name=RP_NAME, user_name=name,
                user_id=hashlib.sha256(b"blindkey approver\x00" + name.encode()).digest(),
                challenge=challenge,
                authenticator_selection=AuthenticatorSelectionCriteria(
                    resident_key=ResidentKeyRequirement.PREFERRED,
                    user_verification=UserVerificationRequirement.REQUIRED,
                ),
                exclude_credentials=[
                    PublicKeyCredentialDescriptor(id=base64url_to_bytes(c["id"])) for c in owned
                ],
            )  # fmt: skip
            return {"approver": name, "options": orjson.loads(options_to_json(options))}

        return core.edit(work)

    def register_finish(
        self, approver: str | None, credential: object, origin: str | None
    ) -> dict[str, Any]:
        expected_origin = _origin(origin)
        name = approver or ""
        now = self.approvals.clock()
        with self.file.editing() as data:
            offered = _take(data, "register", name, now)
        if not isinstance(credential, dict):
            raise BlindkeyError("malformed passkey answer")
        try:
            verified = verify_registration_response(
                credential=credential,
                expected_challenge=base64url_to_bytes(offered["challenge"]),
                expected_rp_id=RP_ID,
                expected_origin=expected_origin,
                require_user_verification=True,
            )
        except WebAuthnException as exc:
            raise BlindkeyError(f"passkey not enrolled: {exc}") from None
        credential_id = bytes_to_base64url(verified.credential_id)
        with self.file.editing() as data:
            data["credentials"].append({
                "approver": name, "id": credential_id,
                "public_key": bytes_to_base64url(verified.credential_public_key),
                "sign_count": verified.sign_count, "created": now, "since": offered["since"],
            })  # fmt: skip
        added = {"change": "approver_passkey_added", "approver": name, "names": [name],
                 "credential": credential_id[:16]}  # fmt: skip
        self.approvals._audit("config", added)
        return {"approver": name, "id": credential_id[:16]}

    # --- approving one pending request ----------------------------------------------------

    def approve_begin(self, request_id: str) -> dict[str, Any]:
        pending = self.approvals.pending.get(request_id)
        self.approvals.load()
        state = self.approvals.state
        nonce = os.urandom(32)
        with self.file.editing() as data:
            allowed = [c for c in data["credentials"] if _usable(state, c)]
            if not allowed:
                raise BlindkeyError("no approver has a passkey; enrol one on the Passkeys page")
            _offer(data, "approve", request_id, nonce, self.approvals.clock())
        options = generate_authentication_options(
            rp_id=RP_ID,
            challenge=binding(pending, nonce),
            allow_credentials=[
                PublicKeyCredentialDescriptor(id=base64url_to_bytes(c["id"])) for c in allowed
            ],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        return {"request": request_id, "options": orjson.loads(options_to_json(options))}

    def approve_finish(
        self, settings: Settings, request_id: str, credential: object, origin: str | None,
        duration: float | None,
    ) -> dict[str, Any]:  # fmt: skip
        expected_origin = _origin(origin)
        pending = self.approvals.pending.get(request_id)
        with self.file.editing() as data:
            # Spent before anything is checked: a wrong answer is not tried again.
            offered = _take(data, "approve", request_id, self.approvals.clock())
        credential_id = _credential_id(credential)
        stored = next((c for c in data["credentials"] if c["id"] == credential_id), None)
        if stored is None:
            raise BlindkeyError("that passkey is not enrolled for any approver")
        challenge = binding(pending, base64url_to_bytes(offered["challenge"]))
        proof = self._proof(credential, stored, challenge, expected_origin)
        return self.approvals.approve_request(
            settings=settings, request_id=request_id, duration=duration,
            approver=stored["approver"], proof=proof,
        )  # fmt: skip

    def _proof(
        self, credential: object, stored: dict[str, Any], challenge: bytes, origin: str
    ) -> Callable[[ApprovalsState, str], None]:
        """The check run under the approvals file's lock, in place of a code's: the same
        lockout, the refusal on the record like a wrong code's."""
        core = self.approvals

        def prove(state: ApprovalsState, name: str) -> None:
            if not _usable(state, stored):
                raise BlindkeyError(f"that passkey was enrolled for an earlier approver {name}")
            now = core.clock()
            until = locked_until(state.approvers[name], now, core.source)
            if until is not None:
                core.note("code_refused", approver=name, reason="locked_out",
                          purpose="approve with a passkey", source=core.source)  # fmt: skip
                raise CodeRefused("locked", name, f"approver {name} is locked out; try again "
                                  f"in {int(until - now) + 1}s")  # fmt: skip
            try:
                verified = verify_authentication_response(
                    credential=credential if isinstance(credential, dict) else {},
                    expected_challenge=challenge,
                    expected_rp_id=RP_ID,
                    expected_origin=origin,
                    credential_public_key=base64url_to_bytes(stored["public_key"]),
                    credential_current_sign_count=int(stored["sign_count"]),
                    require_user_verification=True,
                )
            except WebAuthnException as exc:
                core.note("code_refused", approver=name, reason="passkey_refused",
                          purpose="approve with a passkey", source=core.source)  # fmt: skip
                raise CodeRefused("wrong", name, f"passkey of {name} refused: {exc}") from None
            with self.file.editing() as data:
                for entry in data["credentials"]:
                    if entry["id"] == stored["id"]:
                        entry["sign_count"] = verified.new_sign_count

        return prove


def passkey_actions(
    approvals: Approvals, settings: Settings, params: Params,
    text: Callable[[Params, str], str | None], number: Callable[[Params, str], float | None],
) -> dict[str, Callable[[], Any]]:  # fmt: skip
    """The `approvals` op's passkey actions (ops.py's table takes them in)."""
    keys = Passkeys(approvals)
    t = text
    return {
        "passkeys": keys.listed,
        "passkey_register_begin": lambda: keys.register_begin(
            t(params, "approver"), t(params, "code")
        ),
        "passkey_register_finish": lambda: keys.register_finish(
            t(params, "approver"), params.get("credential"), t(params, "origin")
        ),
        "passkey_approve_begin": lambda: keys.approve_begin(t(params, "request") or ""),
        "passkey_approve_finish": lambda: keys.approve_finish(
            settings,
            t(params, "request") or "",
            params.get("credential"),
            t(params, "origin"),
            number(params, "duration"),
        ),
    }
