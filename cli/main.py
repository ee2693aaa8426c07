"""The `blindkey` command: the root of the tree, `init`, `--version` and the dispatch.

Each command group is one module of cli/ holding its subtree (`add_commands`) and its
handlers; a handler reads its arguments, calls a use case of its package and prints. The
use cases are imported inside the handlers, when a command is chosen: building the tree
loads none of them, so `blindkey --help` and every command pay only for what they run
(the HTTP stack costs about 0.2 s to import, which `secrets set` and the broker process
itself need not pay). Handlers living outside cli/ (the release channels', the service's)
are named by "module:function" strings, imported the same way.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blindkey.broker.home import ensure_home
from blindkey.config.arguments import CommandParser
from blindkey.config.console import say
from blindkey.config.errors import BlindkeyError, reported
from blindkey.config.paths import Paths, resolve_paths

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
Handler = Callable[[Paths, argparse.Namespace], int]
# The command groups (modules of cli/), in the order of `blindkey --help`.
GROUPS = ("proxy", "secrets", "environment", "allowlist", "agent", "approvals", "audit",
          "route", "call", "release", "mcp", "service", "broker", "config", "doctor", "run",
          "ca", "oauth", "budget", "policy", "ui")  # fmt: skip


def cmd_init(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.vault import ensure_key
    from blindkey.config.loader import load_settings
    from blindkey.proxy.tls.ca import ensure_ca

    created = ensure_home(paths, args.backend or "file")
    ensure_key(paths)
    ensure_ca(paths)  # proxy mode's CA: made once, its key this user's only
    if not created and args.backend is not None:
        current = load_settings(paths.config_file).backend
        if current != args.backend:
            raise BlindkeyError(
                f"{paths.config_file} exists with backend {current}; init does not change it "
                f'(values stay where they are): set [backend] kind = "{args.backend}" there '
                "yourself once the values are in the new backend"
            )
    state = "created" if created else "already initialised"
    say(f"{paths.config_file}: {state}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("blindkey")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _checkout_commit(root: Path) -> str | None:
    """The commit of the git checkout the code runs from (an editable install), if any."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except OSError:
        return None
    dirty = ""
    if done.returncode == 0:
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
        dirty = " with uncommitted changes" if changed.stdout.strip() else ""
    return done.stdout.strip() + dirty if done.returncode == 0 else None


def version_text() -> str:
    """Which blindkey runs: the version, the environment it is installed in (a make-run
    venv, pipx and uv each have their own) and, from a checkout, the commit."""
    # The folder holding every package: site-packages/blindkey, or the checkout.
    code = Path(__file__).resolve().parent.parent
    lines = [f"blindkey {_version()}", f"python: {sys.executable}", f"code: {code}"]
    commit = _checkout_commit(code)
    if commit is not None:
        lines.append(f"commit: {commit}")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    """--version, worked out only when asked (it may run git)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print which blindkey runs, and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        sys.stdout.write(version_text() + "\n")
        parser.exit()


def build_parser(groups: Sequence[str] = GROUPS) -> argparse.ArgumentParser:
    """The command tree, with these groups under the root (all of them unless told)."""
    parser = CommandParser(
        prog="blindkey",
        description="Let AI agents use API keys without ever seeing them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("init", help="create the home (config, vault key); idempotent")
    p.add_argument(
        "--backend",
        choices=("file", "keyring", "openbao"),
        default=None,
        help="where values live (file: the encrypted vault; default)",
    )
    p.set_defaults(handler=cmd_init)
    for group in groups:
        importlib.import_module(f"blindkey.cli.{group}").add_commands(sub)
    return parser


def _groups_for(argv: Sequence[str]) -> Sequence[str]:
    """The groups a command line needs: `proxy start` its own alone (its help and its errors
    read the same in that tree), so the daemon is launched before the other twenty groups
    would have loaded (0.2 s); any other command the whole tree, which its errors name."""
    return ("proxy",) if list(argv[:2]) == ["proxy", "start"] else GROUPS


def _handler(chosen: str | Handler) -> Handler:
    if not isinstance(chosen, str):
        return chosen
    module, _, name = chosen.partition(":")
    handler: Handler = getattr(importlib.import_module(module), name)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(_groups_for(words)).parse_args(words)
    paths = resolve_paths()

    def command() -> int:
        if getattr(args, "needs_home", True) and args.handler is not cmd_init:
            ensure_home(paths)
        return int(_handler(args.handler)(paths, args))

    return reported(command)


if __name__ == "__main__":
    raise SystemExit(main())
