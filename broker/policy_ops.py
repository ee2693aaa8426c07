"""The broker's `config` op: accept a policy (the CLI's proposed config.toml, or the file
on disk for `config approve`), with an approver's code when it widens the approved one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from blindkey.broker.approvals.codes import CodeNeeded, CodeRefused
from blindkey.broker.approvals.core import uid_source
from blindkey.broker.policy import accept_policy, policy_view
from blindkey.broker.policy_gate import read_config_text
from blindkey.broker.protocol import BrokerDenied, Message
from blindkey.config.errors import BlindkeyError

if TYPE_CHECKING:
    from blindkey.broker.state import BrokerState


def _text(params: Message, key: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise BrokerDenied("bad_request", f"{key} must be a string")
    return value


def config_op(state: BrokerState, request: Message, uid: int | None) -> Message:
    action, params = request.get("action"), request.get("params")
    if action not in ("accept", "approve", "status") or not isinstance(params, dict):
        raise BrokerDenied("bad_request", "malformed config request")
    if action == "status":
        return {"id": request.get("id"), "result": {"refused": state.policy.refused}}
    try:
        text = _text(params, "text") if action == "accept" else None
        if text is None:
            text = read_config_text(state.paths.config_file)
        with state.approvals.acting_for(uid_source(uid)):
            result = accept_policy(
                state.paths,
                state.approvals,
                text,
                policy_view(state.settings),
                state.held,
                _text(params, "by"),
                _text(params, "code"),
            )
    except CodeRefused as exc:
        raise BrokerDenied(exc.code, str(exc)) from None
    except CodeNeeded as exc:
        raise BrokerDenied("code_needed", str(exc)) from None
    except BlindkeyError as exc:
        raise BrokerDenied("refused", str(exc)) from None
    if action == "approve":
        state.reread()
    return {"id": request.get("id"), "result": result}
