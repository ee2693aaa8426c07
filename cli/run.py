"""`blindkey run [--agent NAME] [--secret NAME[=VAR]]... [--isolate] -- CMD`: an agent's
command, run so that every program in it uses blindkey unchanged (proxy mode: the proxy and
CA variables, placeholders where keys go) and, isolated, cannot read what blindkey keeps.

In the single-user deployment an agent with a shell is the vault's owner: it can read the
vault key, approvals.bin, the chain key and reach the broker's socket. `--isolate` runs CMD
under bubblewrap as the same user with every directory of blindkey's home (and of the
default home, when BLINDKEY_HOME points elsewhere) covered by an empty tmpfs, in its own
PID namespace with its own /proc (no path through /proc/PID/root into the proxy's view),
in a session of its own (no TIOCSTI into the caller's terminal). The network is shared:
the proxy stays reachable on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from blindkey.config.arguments import Subcommands
from blindkey.config.console import warn
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths, resolve_paths

if TYPE_CHECKING:
    from blindkey.config.model import Settings

BWRAP = "bwrap"


def hidden_paths(paths: Paths, configured_socket: str = "") -> list[Path]:
    """Every directory blindkey keeps something in, this home's and the default one's."""
    homes = [paths]
    if "BLINDKEY_HOME" in os.environ:
        default = {k: v for k, v in os.environ.items() if k != "BLINDKEY_HOME"}
        homes.append(resolve_paths(default))
    found: dict[Path, None] = {}
    for home in homes:
        for directory in home.all_dirs():
            found[directory.absolute()] = None
    if configured_socket:
        found[Path(configured_socket).absolute().parent] = None
    # A parent covers its children: mounting over both would hide the parent's tmpfs.
    ordered = sorted(found, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return kept


def isolation_argv(hidden: Iterable[Path], command: list[str]) -> list[str]:
    argv = [
        BWRAP,
        "--dev-bind", "/", "/",
        "--unshare-pid", "--unshare-ipc",
        "--proc", "/proc",
        "--new-session",
        "--die-with-parent",
    ]  # fmt: skip
    for path in hidden:
        if path.exists():
            argv += ["--tmpfs", str(path)]
    return [*argv, "--", *command]


def _bubblewrap_works(hidden: list[Path]) -> str | None:
    """None when bubblewrap can make its namespaces here, else what it said."""
    if shutil.which(BWRAP) is None:
        return "bubblewrap (bwrap) is not installed: `apt install bubblewrap` (or your system's)"
    probe = subprocess.run(
        isolation_argv(hidden, ["true"]), capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode == 0:
        return None
    said = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
    return (
        f"bubblewrap cannot isolate here ({said[0].removeprefix('bwrap: ')}): user namespaces "
        "are off or not allowed for this user (see sysctl user.max_user_namespaces)"
    )


def _placeholders(paths: Paths, settings: Settings, wanted: list[str]) -> dict[str, str]:
    from blindkey.broker import link

    if not wanted:
        return {}
    reply = link.ask(paths, "placeholders", settings=settings, env=settings.active_env)
    if reply.get("error"):
        raise BlindkeyError(f"the broker gave no placeholders: {reply.get('message')}")
    return dict(reply.get("placeholders") or {})


def _proxy_address(paths: Paths, settings: Settings) -> tuple[str, int]:
    from blindkey.proxy import lifecycle

    current = lifecycle.running(paths)
    if current is None:
        warn("the proxy is not running: start it with `blindkey proxy start`")
        return settings.proxy.host, settings.proxy.port
    return str(current.status.get("host")), int(current.status.get("port") or 0)


@contextlib.contextmanager
def _run_token(paths: Paths, agent: str | None) -> Iterator[str | None]:
    """The token CMD's proxy variables carry: one issued for this run only (--agent NAME),
    revoked when CMD exits; else BLINDKEY_AGENT_TOKEN."""
    from blindkey.broker.agents import AgentStore
    from blindkey.broker.notify import put_in_force
    from blindkey.proxy.tls.environment import agent_token

    if agent is None:
        token = agent_token()
        if token is None:
            warn(
                "no agent token (--agent NAME, or BLINDKEY_AGENT_TOKEN): the proxy answers "
                "CMD's HTTPS calls 407"
            )
        yield token
        return
    store = AgentStore(paths.agents_file, paths.lock_file)
    token = store.add(agent)
    try:
        put_in_force(paths, None, f"agent {agent} is added for this run")
        yield token
    finally:
        store.revoke(agent)
        with contextlib.suppress(BlindkeyError):
            put_in_force(paths, None, f"agent {agent} is revoked")


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("run needs a command: blindkey run [--isolate] -- CMD [ARG...]")
    return command


def cmd_run(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.proxy.tls.ca import ensure_ca, load_ca
    from blindkey.proxy.tls.environment import (
        proxy_url,
        run_directory,
        run_environment,
        secret_variables,
        write_bundles,
    )

    command = _command(args)
    settings = load_settings(paths.config_file)
    if args.isolate:
        hidden = hidden_paths(paths, settings.broker.socket)
        problem = _bubblewrap_works(hidden)
        if problem is not None:
            raise BlindkeyError(f"run --isolate: {problem}")
        command = isolation_argv(hidden, command)
    ensure_ca(paths)
    variables = secret_variables(args.secret, _placeholders(paths, settings, args.secret))
    host, port = _proxy_address(paths, settings)
    directory = run_directory()
    try:
        ca, bundle = write_bundles(directory, load_ca(paths))
        with _run_token(paths, args.agent) as token:
            environment = run_environment(
                os.environ, proxy_url(host, port, token), ca, bundle, variables
            )
            return _wait(command, environment)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait(command: list[str], environment: dict[str, str]) -> int:
    from blindkey.broker.release_env import pass_through

    try:
        process = subprocess.Popen(command, env=environment)
    except FileNotFoundError:
        raise BlindkeyError(f"{command[0]}: command not found") from None
    try:
        status = process.wait()
    except KeyboardInterrupt:
        status = process.wait()
    return pass_through(status)


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser(
        "run",
        help="run an agent's command through the proxy (proxy mode); --isolate: it cannot "
        "see blindkey's files",
        description="CMD runs with HTTPS_PROXY/HTTP_PROXY set to the proxy with the agent's "
        "token, the CA variables (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, "
        "GIT_SSL_CAINFO, NODE_EXTRA_CA_CERTS) set to blindkey's CA, and placeholders where "
        "keys go: the proxy puts the values in on the way to each secret's own hosts. "
        "--isolate (Linux, bubblewrap): CMD runs as you, but blindkey's home, the broker's "
        "socket and the CA key are covered by empty directories and other processes are out "
        "of its sight; the proxy stays reachable on loopback. blindkey exits with CMD's "
        "status.",
    )
    p.add_argument(
        "--isolate", action="store_true", help="hide blindkey's files from CMD (bubblewrap)"
    )
    p.add_argument(
        "--agent",
        metavar="NAME",
        help="issue a token for agent NAME for this run only (revoked when CMD exits); "
        "default: BLINDKEY_AGENT_TOKEN",
    )
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME[=VAR]",
        help="give CMD the placeholder of secret NAME in VAR (default: NAME); repeatable",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(handler=cmd_run)
