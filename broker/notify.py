"""Tell a running broker that the CLI changed something, and wait until it is in force.

The broker applies the change, pushes an invalidation to every proxy it serves and answers
once each has acknowledged it: dropped what it cached and, if its config.toml changed,
re-read it (the allowlist lives there). So no request that starts after the command
returned sees the old state. The broker and the proxy also notice changed files by
themselves within a fraction of a second; this is what makes the change certain when the
command returns. No broker listening: nothing runs that could hold an old copy, and a
proxy whose broker is restarting reads everything afresh before it serves again.
"""

from __future__ import annotations

from collections.abc import Iterable

from blindkey.broker.link import CHANGE_TIMEOUT, NotPermitted, NotRunning, ask
from blindkey.broker.protocol import ACK_TIMEOUT, BrokerUnavailable
from blindkey.config.errors import BlindkeyError
from blindkey.config.model import Settings
from blindkey.config.paths import Paths

CHECK = "check `blindkey proxy status`; the change is saved and applies once it answers"


def notify_broker(
    paths: Paths,
    settings: Settings | None,
    changed: Iterable[tuple[str, str]] = (),
    *,
    config: bool = False,
) -> str | None:
    """Why the change is not known to be in force, or None: every running proxy uses it,
    or none runs. `changed`: the (env, name) values written; `config`: config.toml edited."""
    # settings None: read here, and a broken config.toml must not make the change (made
    # already) look failed, so the link falls back to the default socket.
    try:
        reply = ask(
            paths,
            "refresh",
            settings=settings,
            timeout=CHANGE_TIMEOUT,
            changed=[[env, name] for env, name in changed],
            config=config,
        )
    except (NotRunning, NotPermitted):
        # Nothing listens, or the socket is another user's that we may not open.
        return None
    except BrokerUnavailable as exc:
        return f"{exc}; {CHECK}"
    if "error" in reply:
        return f"the broker refused it: {reply.get('message', reply['error'])}"
    if reply.get("refused"):
        return (
            f"the broker cannot load the files and serves what it had before: "
            f"{reply['refused']}; fix that and the change applies by itself"
        )
    if reply.get("policy_refused"):
        # config.toml holds a widening nobody approved: the broker serves the approved one.
        return str(reply["policy_refused"])
    late = reply.get("unconfirmed")
    if isinstance(late, int) and late > 0:
        proxies = "1 running proxy" if late == 1 else f"{late} running proxies"
        return f"{proxies} did not confirm it within {ACK_TIMEOUT:.0f}s; {CHECK}"
    return None


def put_in_force(
    paths: Paths,
    settings: Settings | None,
    done: str,
    changed: Iterable[tuple[str, str]] = (),
    *,
    config: bool = False,
) -> None:
    """Return once every running proxy uses the change; else fail naming what to do.

    `done` says what is saved either way ("GITHUB_TOKEN is stored in development").
    """
    problem = notify_broker(paths, settings, changed, config=config)
    if problem is not None:
        raise BlindkeyError(f"{done}, but it is not in force yet: {problem}")
