"""How a CLI command reaches the approvals: the running broker over its socket, or, when
none listens, the approvals file in-process (which only the broker's user can open)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from typing import Any

from blindkey.broker.approvals import Approvals, Exists
from blindkey.broker.approvals_codes import CodeNeeded, CodeRefused, refusal_from
from blindkey.broker.approvals_ops import run_action
from blindkey.broker.backends import open_backend
from blindkey.broker.link import CHANGE_TIMEOUT, NotPermitted, NotRunning, ask
from blindkey.broker.protocol import Message
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths

# What a CLI command says when this home's broker belongs to another user.
NOT_THIS_USERS = (
    "this user may not open the broker's socket: approvals are managed by the "
    "broker's user (e.g. `sudo -u BROKER_USER blindkey ...`)"
)


def ask_broker(
    paths: Paths, op: str, action: str, params: dict[str, Any], *, foreign: str | None
) -> Message | None:
    """One request of a CLI command to this home's broker: its reply, or None when no
    broker runs. A broker of another user is refused with `foreign`, or taken as none when
    `foreign` is None (it does not serve this user's files)."""
    settings = load_settings(paths.config_file)
    try:
        return ask(
            paths, op, settings=settings, timeout=CHANGE_TIMEOUT, action=action, params=params
        )
    except NotRunning:
        return None
    except NotPermitted as exc:
        if foreign is None:
            return None
        raise BlindkeyError(foreign) from exc


def _store_has(paths: Paths, settings: Settings) -> Exists:
    """Whether the secret store holds a name (True when it cannot say: the store is
    not this check's to report)."""

    def exists(env: str, name: str) -> bool:
        try:
            store = open_backend(paths, settings)
            try:
                return name in store.names(env)
            finally:
                store.close()
        except BlindkeyError:
            return True

    return exists


def call(paths: Paths, action: str, **params: Any) -> Any:
    """The action's result; raises CodeRefused (exit 4), CodeNeeded or BlindkeyError."""
    params = {k: v for k, v in params.items() if v is not None}
    reply = ask_broker(paths, "approvals", action, params, foreign=NOT_THIS_USERS)
    if reply is None:
        settings = load_settings(paths.config_file)
        return run_action(Approvals(paths), settings, action, params, _store_has(paths, settings))
    return reply_result(reply)


def reply_result(reply: Message) -> Any:
    """A broker reply's result; its error as CodeRefused (exit 4), CodeNeeded or
    BlindkeyError."""
    error = reply.get("error")
    if error is None:
        return reply.get("result")
    message = str(reply.get("message", error))
    refusal = refusal_from(str(error), message)
    if refusal is not None:
        raise refusal
    if error == "code_needed":
        raise CodeNeeded(message)
    raise BlindkeyError(message)


def read_code(prompt: str) -> str:
    """A code from a no-echo prompt on a terminal, else one line of stdin."""
    code = getpass.getpass(f"{prompt}: ") if sys.stdin.isatty() else sys.stdin.readline()
    code = code.strip()
    if not code:
        raise BlindkeyError("no code given (use --code, the prompt, or one line on stdin)")
    return code


def with_code(
    given: str | None, prompt: str, attempt: Callable[[str | None], Any], *, required: bool
) -> Any:
    """Run `attempt` with the code given; when none was given and one turns out to be
    needed (or always, when `required`), ask for it once and run it again."""
    code = given
    if code is None and required:
        code = read_code(prompt)
    try:
        return attempt(code)
    except CodeNeeded as exc:
        if code is not None:
            raise
        sys.stderr.write(f"{exc}\n")
        return attempt(read_code(prompt))


def exit_for_refusal(handler: Callable[..., int]) -> Callable[..., int]:
    """Exit 4, with the refusal's one line, when a code was refused (wrong, reused, locked)."""

    def run(*args: Any) -> int:
        try:
            return handler(*args)
        except CodeRefused as exc:
            sys.stderr.write(f"blindkey: {exc}\n")
            return exc.exit_code

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run
