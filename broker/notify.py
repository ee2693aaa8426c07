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

import socket
from collections.abc import Iterable

from blindkey.broker.protocol import ACK_TIMEOUT, FrameDecoder, Message, ProtocolError, encode
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths

# Longer than the broker waits for its proxies, so its own answer about a late one arrives.
TIMEOUT = ACK_TIMEOUT + 3.0
CHECK = "check `blindkey proxy status`; the change is saved and applies once it answers"


def _answer(sock: socket.socket, request: Message) -> Message:
    sock.sendall(encode(request))
    frames = FrameDecoder()
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the broker closed the connection")
        for reply in frames.feed(data):
            # Invalidations pushed to every client arrive here too.
            if reply.get("id") == request["id"]:
                return reply


def notify_broker(
    paths: Paths,
    settings: Settings | None,
    changed: Iterable[tuple[str, str]] = (),
    *,
    config: bool = False,
) -> str | None:
    """Why the change is not known to be in force, or None: every running proxy uses it,
    or none runs. `changed`: the (env, name) values written; `config`: config.toml edited."""
    if settings is None:
        try:
            settings = load_settings(paths.config_file)
        except BlindkeyError:
            # The change itself is made; a broken config must not make it look failed.
            settings = Settings()
    request = {
        "id": 1,
        "op": "refresh",
        "changed": [[env, name] for env, name in changed],
        "config": config,
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(str(paths.broker_socket_at(settings.broker.socket)))
        except OSError:
            # Nothing listens, or the socket is another user's that we may not open.
            return None
        try:
            reply = _answer(sock, request)
        except TimeoutError:
            return f"the broker did not answer within {TIMEOUT:.0f}s; {CHECK}"
        except (OSError, ProtocolError) as exc:
            return f"the broker's answer broke off ({exc}); {CHECK}"
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
