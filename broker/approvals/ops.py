"""The broker's `approvals` op (the CLI's commands, from the broker's own user only) and
`hold` op (the proxy: a call met a gate; record it as a pending request)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from blindkey.audit.events import append_event
from blindkey.broker.approvals.codes import CodeNeeded, CodeRefused
from blindkey.broker.approvals.core import uid_source
from blindkey.broker.approvals.pending import PENDING_ID
from blindkey.broker.approvals.service import Approvals, Exists
from blindkey.broker.protocol import BrokerDenied, Message
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import Settings
from blindkey.config.paths import Paths

if TYPE_CHECKING:
    from blindkey.broker.state import BrokerState


def _text(params: Message, key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BrokerDenied("bad_request", f"{key} must be a string")
    return value


def _number(params: Message, key: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BrokerDenied("bad_request", f"{key} must be a number")
    return float(value)


def _approve(
    approvals: Approvals, settings: Settings, params: Message, env: str, exists: Exists | None
) -> dict[str, Any]:
    t = _text
    return approvals.approve(
        settings=settings, secret=t(params, "secret") or "", env=env, agent=t(params, "agent"),
        duration=_number(params, "duration"), approver=t(params, "approver"),
        code=t(params, "code"), exists=exists,
    )  # fmt: skip


def run_action(
    approvals: Approvals, settings: Settings, action: str, params: Message,
    exists: Exists | None = None,
) -> Any:  # fmt: skip
    """One CLI command, done by whoever holds the approvals file (the broker, or the CLI
    in-process when no broker runs). Raises CodeRefused or BlindkeyError."""
    t, n = _text, _number
    env = t(params, "env") or settings.active_env
    actions: dict[str, Callable[[], Any]] = {
        "enroll": lambda: approvals.enroll(
            t(params, "approver"), t(params, "by"), t(params, "code")
        ),
        "confirm": lambda: approvals.confirm(t(params, "approver"), t(params, "code")),
        "approvers": approvals.approvers,
        "remove": lambda: approvals.remove(
            t(params, "name") or "", t(params, "by"), t(params, "code")
        ),
        "approve": lambda: _approve(approvals, settings, params, env, exists),
        "approve_request": lambda: approvals.approve_request(
            settings=settings,
            request_id=t(params, "request") or "",
            duration=n(params, "duration"),
            approver=t(params, "approver"),
            code=t(params, "code"),
        ),
        "deny": lambda: approvals.deny(t(params, "request") or ""),
        "requests": approvals.pending.listed,
        "grants": approvals.grants,
        "revoke": lambda: approvals.revoke(
            t(params, "secret"), t(params, "env"), t(params, "agent"), params.get("all") is True
        ),
        "policy": lambda: approvals.set_policy(
            settings,
            t(params, "name") or "",
            t(params, "tier"),
            int(n(params, "approvals") or 0) or None,
            t(params, "by"),
            t(params, "code"),
            params.get("anyway") is True,
        ),
        "copy_env": lambda: approvals.consent_to_copy(
            t(params, "source") or "", t(params, "target") or "", t(params, "by"), t(params, "code")
        ),
        "forget": lambda: approvals.forget_secret(
            settings,
            t(params, "name") or "",
            env,
            params.get("last") is True,
            t(params, "by"),
            t(params, "code"),
        ),
    }
    if action.startswith("passkey"):
        # `blindkey ui`'s passkeys; imported for them only, so webauthn and its CBOR and
        # ASN.1 parsers load in no other command.
        from blindkey.broker.approvals.passkeys import passkey_actions

        actions.update(passkey_actions(approvals, settings, params, t, n))
    work = actions.get(action)
    if work is None:
        raise BrokerDenied("bad_request", f"unknown approvals action {action!r}")
    return work()


def approvals_op(
    approvals: Approvals, settings: Settings, request: Message, uid: int | None,
    exists: Exists | None = None,
) -> Message:  # fmt: skip
    """`uid`: the Unix user of the CLI asking (SO_PEERCRED): the source its codes count
    against for the lockout."""
    action = request.get("action")
    params = request.get("params")
    if not isinstance(action, str) or not isinstance(params, dict):
        raise BrokerDenied("bad_request", "malformed approvals request")
    try:
        with approvals.acting_for(uid_source(uid)):
            result = run_action(approvals, settings, action, params, exists)
    except CodeRefused as exc:
        raise BrokerDenied(exc.code, str(exc)) from None
    except CodeNeeded as exc:
        raise BrokerDenied("code_needed", str(exc)) from None
    except BrokerDenied:
        raise
    except BlindkeyError as exc:
        raise BrokerDenied("refused", str(exc)) from None
    return {"id": request.get("id"), "result": result}


def hold_op(state: BrokerState, request: Message) -> Message:
    """A call met a gate: record it (agent, secret, method, host, path) for `approvals
    list`, and give the proxy the id the agent is told to hand its human."""
    token, names = request.get("token"), request.get("names")
    host, method, path = request.get("host"), request.get("method"), request.get("path")
    # A proxy that does not say (an older one): the destination a bare host entry names.
    scheme, port = request.get("scheme", "https"), request.get("port", 443)
    # The id the call had before this broker started (it restarted while the call waited).
    known = request.get("approval_id")
    if (
        not (known is None or (isinstance(known, str) and PENDING_ID.fullmatch(known)))
        or not (token is None or isinstance(token, str))
        or not isinstance(names, list)
        or not all(isinstance(name, str) for name in names)
        or not all(isinstance(v, str) for v in (host, method, path, scheme))
        or not isinstance(port, int)
    ):
        raise BrokerDenied("bad_request", "malformed hold")
    agent = state.authenticate(token, narrowed=True)  # its limits were met by resolve
    env = state.settings.active_env
    target = (str(scheme), str(host), int(port))
    for name in names:
        denied = state.check_release(agent, env, name, "proxy", target)
        if denied is not None and denied.code == "approval_required":
            try:
                pending = state.approvals.pending.add(
                    agent, name, env, str(method), target, str(path), known,
                    held=request.get("held") is True,
                )  # fmt: skip
            except BlindkeyError as exc:  # past the cap: refused, no id to approve
                raise BrokerDenied("approval_required", f"{name} needs a grant; {exc}") from None
            policy = state.settings.policy(name)
            needed, have = state.approvals.progress(name, env, agent, target, policy)
            return {
                "id": request.get("id"), "approval_id": pending.id, "secret": name,
                "needed": needed, "have": have,
            }  # fmt: skip
    # Granted meanwhile (or refused for another reason): the proxy asks again.
    return {"id": request.get("id"), "approval_id": None}


def refuse_foreign(paths: Paths, request: Message, uid: int | None) -> NoReturn:
    """An approvals request from a user other than the broker's (a proxy's user, or
    whatever got hold of it): refused, and on the record."""
    action = request.get("action")
    append_event(
        paths.audit_dir,
        "code_refused",
        {"reason": "not_broker_user", "uid": uid, "action": str(action)[:32]},
    )
    raise BrokerDenied("refused", "approvals are managed by the broker's user only")
