"""How a CLI command changes policy: the new config.toml is accepted by the broker (which
asks for an approver's code when it widens the approved policy) before it is written, and
every change leaves an `event: config` record naming who made it."""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable, Iterable
from typing import Any

import tomlkit

from blindkey.audit.events import append_event
from blindkey.broker.approvals.codes import CodeNeeded, CodeRefused
from blindkey.broker.approvals.service import Approvals
from blindkey.broker.approvals_link import ask_broker, read_code, reply_result
from blindkey.broker.backends import open_backend
from blindkey.broker.policy import View, accept_policy, policy_view, settings_from_text
from blindkey.config.edit import edit_config
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths


class CodeMissing(CodeRefused):
    """A widening asked for no code and there is no terminal to ask on: refused (exit 4)."""

    @property
    def code(self) -> str:
        return "code_needed"


def unix_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"


def _assume_held(name: str) -> bool:
    return True


def _in_process(paths: Paths, action: str, params: dict[str, Any]) -> Any:
    """No broker runs: the same acceptance on the broker's files, in this process."""
    current = load_settings(paths.config_file)
    text = params.get("text") or paths.config_file.read_text("utf-8")
    held: Callable[[str], bool] = _assume_held
    try:
        store = open_backend(paths, current)
        try:
            held = {n for env in current.environments for n in store.names(env)}.__contains__
        finally:
            store.close()
    except (BlindkeyError, OSError):
        pass  # a store that cannot be read: every value may still be there
    return accept_policy(
        paths,
        Approvals(paths),
        text,
        policy_view(current),
        held,
        params.get("by"),
        params.get("code"),
    )


def _accept(paths: Paths, action: str, params: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in params.items() if v is not None}
    # Another user's broker does not serve this user's config.toml: judged here instead.
    reply = ask_broker(paths, "config", action, params, foreign=None)
    if reply is None or reply.get("error") == "not_broker_user":
        result: dict[str, Any] = _in_process(paths, action, params)
        return result
    answer: dict[str, Any] = reply_result(reply) or {}
    return answer


def accept(
    paths: Paths, action: str, text: str | None, by: str | None, code: str | None
) -> dict[str, Any]:
    """The broker's acceptance of `text` (None: the file on disk); asks for a code on a
    terminal when one is needed and none was given, else refuses with exit 4."""
    try:
        return _accept(paths, action, {"text": text, "by": by, "code": code})
    except CodeNeeded as exc:
        if code is not None:
            raise
        if not sys.stdin.isatty():
            raise CodeMissing(
                "wrong", by or "", f"{exc}: give --by NAME --code CODE (nothing changed)"
            ) from None
        sys.stderr.write(f"{exc}\n")
        given = read_code(f"Code of approver {by or 'default'}")
        return _accept(paths, action, {"text": text, "by": by, "code": given})


def record(
    paths: Paths,
    change: str,
    names: Iterable[str],
    before: View | None = None,
    after: View | None = None,
    approver: str | None = None,
    via: str = "cli",
) -> None:
    fields: dict[str, Any] = {
        "change": change,
        "by": unix_user(),
        "via": via,
        "names": list(names),
        "before": before,
        "after": after,
    }
    if approver:
        fields["approver"] = approver
    append_event(paths.audit_dir, "config", fields)


def change_policy(
    paths: Paths,
    change: Callable[[tomlkit.TOMLDocument], None],
    kind: str,
    names: Iterable[str],
    by: str | None,
    code: str | None,
) -> Settings:
    """Edit config.toml with `change`, accepted by the broker first (a code when it
    widens), then written and recorded. Returns the new settings."""
    accepted: dict[str, Any] = {}

    def approve(text: str) -> None:
        accepted.update(accept(paths, "accept", text, by, code))

    settings = edit_config(paths.config_file, paths.lock_file, change, approve)
    # Against the approved policy: a hand edit the CLI carried along shows here too.
    before, after = accepted.get("before") or {}, accepted.get("after") or {}
    record(paths, kind, names, before, after, accepted.get("approver"))
    return settings


__all__ = ["accept", "change_policy", "record", "settings_from_text"]
