"""The `blindkey` command: each package registers its own subcommands here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from blindkey.audit.cli import add_logs_parser
from blindkey.broker import cli as broker_cli
from blindkey.broker.vault import ensure_key
from blindkey.config import cli as config_cli
from blindkey.config.arguments import CommandParser, port
from blindkey.config.console import emit_json, say
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.home import init_config
from blindkey.config.paths import Paths, resolve_paths
from blindkey.proxy import lifecycle

EPILOG = """\
A first session:
  blindkey init
  blindkey allowlist add api.github.com
  printf %s "$GITHUB_TOKEN" | blindkey secrets set GITHUB_TOKEN --host api.github.com
  blindkey agent add my-agent            # prints the agent's token once
  blindkey proxy start
  curl -H "X-AS-Agent-Token: $TOKEN" -H "X-AS-Target-URL: https://api.github.com/user" \\
       -H "X-AS-Inject-Bearer: GITHUB_TOKEN" http://127.0.0.1:8765/proxy

Files live under $BLINDKEY_HOME when set, else the XDG directories.
"""


def ensure_home(paths: Paths, backend: str = "file") -> bool:
    created = init_config(paths, backend)
    ensure_key(paths)
    return created


def cmd_init(paths: Paths, args: argparse.Namespace) -> int:
    created = ensure_home(paths, args.backend)
    state = "created" if created else "already initialised"
    say(f"{paths.config_file}: {state}")
    return 0


def cmd_proxy_start(paths: Paths, args: argparse.Namespace) -> int:
    if args.foreground:
        return lifecycle.run_foreground(paths, args.host, args.port, args.allow_remote)
    current = lifecycle.start_detached(paths, args.host, args.port, args.allow_remote)
    say(
        f"blindkey proxy running on http://{current.status.get('host')}:"
        f"{current.status.get('port')} (pid {current.pid})"
    )
    return 0


def cmd_proxy_stop(paths: Paths, args: argparse.Namespace) -> int:
    pid = lifecycle.stop(paths)
    say("the proxy was not running" if pid is None else f"stopped the proxy (pid {pid})")
    return 0


def cmd_proxy_status(paths: Paths, args: argparse.Namespace) -> int:
    current = lifecycle.running(paths)
    if current is None:
        if args.json:
            emit_json({"running": False})
        else:
            say("blindkey proxy is not running")
        return lifecycle.EXIT_NOT_RUNNING
    info = lifecycle.describe(current)
    if args.json:
        emit_json(info)
    else:
        say(
            f"running: pid {info['pid']}, http://{info['host']}:{info['port']}, "
            f"up {info['uptime_s']}s, broker {info['broker']}, backend {info['backend']}, "
            f"environment {info['env']}"
        )
        if info["config_error"]:
            say(f"config refused (running configuration kept): {info['config_error']}")
    return 0


def cmd_proxy_reload(paths: Paths, args: argparse.Namespace) -> int:
    status = lifecycle.reload(paths)
    if status.get("config_error"):
        raise BlindkeyError(
            f"config refused, the running configuration is kept: {status['config_error']}"
        )
    say("configuration reloaded")
    return 0


def _version() -> str:
    try:
        return version("blindkey")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="blindkey",
        description="Let AI agents use API keys without ever seeing them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"blindkey {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("init", help="create the home (config, vault key); idempotent")
    p.add_argument(
        "--backend",
        choices=("file", "keyring", "openbao"),
        default="file",
        help="where values live (file: the encrypted vault; default)",
    )
    p.set_defaults(func=cmd_init)

    proxy = sub.add_parser("proxy", help="run and inspect the proxy daemon")
    actions = proxy.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("start", help="start the proxy (returns once /health answers)")
    p.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    p.add_argument("--port", type=port, help="port (default from config: 8765; 0 picks one)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on a non-loopback --host: every caller then needs an agent token, and "
        "remote callers must be in [proxy] allowed_peers",
    )
    p.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached (for systemd, launchd and make run)",
    )
    p.set_defaults(func=cmd_proxy_start)
    p = actions.add_parser("stop", help="stop gracefully (drains requests for up to 10s)")
    p.set_defaults(func=cmd_proxy_stop)
    p = actions.add_parser("status", help="exit 0 when running, 3 when not")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_proxy_status)
    p = actions.add_parser("reload", help="re-read config.toml (a bad file is refused)")
    p.set_defaults(func=cmd_proxy_reload)
    add_logs_parser(actions)

    broker_cli.register(sub)
    config_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = resolve_paths()
    try:
        if getattr(args, "needs_home", True) and args.func is not cmd_init:
            ensure_home(paths)
        return int(args.func(paths, args))
    except UsageError as exc:
        sys.stderr.write(f"blindkey: {exc}\n")
        return 2
    except BlindkeyError as exc:
        sys.stderr.write(f"blindkey: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"blindkey: {exc.strerror or exc}{where}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
