"""The `blindkey` command: every subcommand, its flags and its handler, in one tree.

Handlers live in the package whose data they touch (broker/ for secrets, agents and the
broker; config/ for the allowlist and config checks; audit/ for logs; proxy/ for the
daemon) and are named here as "module:function", imported only when chosen: a command
then loads what it needs and no more (the HTTP stack costs about 0.2 s to import, which
`secrets set` and the broker process itself need not pay).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from blindkey.broker import serve
from blindkey.cli.approvals_tree import add_approval_commands, approver_code
from blindkey.cli.audit_tree import add_audit_commands
from blindkey.cli.integrations_tree import add_integration_commands
from blindkey.cli.service_tree import add_service_commands
from blindkey.config.arguments import (
    CommandParser,
    Subcommands,
    action_group,
    count,
    json_flag,
    port,
    positive,
)
from blindkey.config.console import say
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.home import init_config
from blindkey.config.model import MIN_REDACTABLE, TIERS
from blindkey.config.paths import Paths, resolve_paths
from blindkey.config.stores import PRODUCTION

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


def ensure_home(paths: Paths, backend: str = "file") -> bool:
    from blindkey.broker.vault import VaultError, ensure_key

    created = init_config(paths, backend)
    # A vault whose key is gone is reported by the commands that open it; the others
    # (proxy status, stop, logs, the audit) must still work, or nothing could stop a proxy.
    with contextlib.suppress(VaultError):
        ensure_key(paths)
    return created


def cmd_init(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.vault import ensure_key
    from blindkey.config.loader import load_settings

    created = ensure_home(paths, args.backend or "file")
    ensure_key(paths)
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


def _remote_options(p: argparse.ArgumentParser, *, writes: bool) -> None:
    p.add_argument("--env", help="environment (default: the active one)")
    p.add_argument("--all", action="store_true", help="every environment")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only show what would change" if writes else "diff never writes; accepted for scripts",
    )
    if writes:
        p.add_argument("--yes", action="store_true", help=f"confirm writing into {PRODUCTION}")
    json_flag(p)


def _proxy(sub: Subcommands) -> None:
    actions = action_group(sub, "proxy", help="run and inspect the proxy daemon")
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
        "--foreground", action="store_true", help="stay attached (for systemd, launchd, make run)"
    )
    p.set_defaults(handler="blindkey.cli.proxy:cmd_proxy_start")
    p = actions.add_parser("stop", help="stop gracefully (drains calls for [limits] drain_timeout)")
    p.set_defaults(handler="blindkey.cli.proxy:cmd_proxy_stop")
    p = actions.add_parser("status", help="exit 0 when running, 3 when not")
    json_flag(p)
    p.set_defaults(handler="blindkey.cli.proxy:cmd_proxy_status")
    p = actions.add_parser("reload", help="re-read config.toml (a bad file is refused)")
    p.set_defaults(handler="blindkey.cli.proxy:cmd_proxy_reload")
    p = actions.add_parser(
        "logs",
        help="show audit records (oldest first)",
        description="Audit records, oldest first. With --json: a JSON array, or one object "
        "per line with --follow.",
    )
    p.add_argument("--last", type=count, metavar="N", help="only the last N records")
    p.add_argument("--secret", metavar="NAME", help="records that used this secret")
    p.add_argument("--agent", metavar="NAME", help="records of this agent")
    p.add_argument("--status", choices=("allowed", "blocked"), help="by decision")
    p.add_argument("--since", metavar="WHEN", help="1h, 30m, 2d or 2026-11-21T10:00Z")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.add_argument(
        "--flagged", action="store_true", help="only records with flags a human should look at"
    )
    json_flag(p)
    p.set_defaults(handler="blindkey.cli.logs:cmd_logs")


def _secrets(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "secrets",
        help="store, list and delete secret values",
        description="Values live in the vault; metadata in config.toml.",
    )
    p = actions.add_parser(
        "set",
        help="store a value (read from stdin, or prompted without echo)",
        description="Store NAME's value. Pipe it on stdin "
        '(`printf %s "$TOKEN" | blindkey secrets set GITHUB_TOKEN`) or type it '
        "at the hidden prompt. NAME=VALUE works but leaves the value in history.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--env", help="environment (default: the active one)")
    p.add_argument("--tier", choices=TIERS, help="open (default), controlled or restricted")
    p.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="bind the secret to this destination, as an allowlist entry: host (https, "
        "port 443), host:port, http://host[:port], *.example.com (repeatable)",
    )
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME",
        help="only this agent may use it (repeatable; default: every agent)",
    )
    p.add_argument(
        "--allow-short",
        action="store_true",
        help=f"store a value shorter than {MIN_REDACTABLE} characters, which cannot be "
        "redacted safely; every use is then marked in the audit",
    )
    p.add_argument(
        "--release",
        metavar="CHANNELS",
        help="who may hand the value out: proxy (default), env, exec, comma-separated",
    )
    p.add_argument(
        "--approvals",
        type=positive,
        metavar="N",
        help="distinct approvers a grant of this secret needs (default 1)",
    )
    approver_code(p)
    p.add_argument("--yes", action="store_true", help="set a gated tier with no approver active")
    p.set_defaults(handler="blindkey.cli.secrets:cmd_secrets_set")
    p = actions.add_parser("list", help="names, environments and policy (never values)")
    json_flag(p)
    p.set_defaults(handler="blindkey.cli.secrets:cmd_secrets_list")
    p = actions.add_parser("delete", help="delete a value")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--env", help="environment (default: the active one)")
    approver_code(p)
    p.set_defaults(handler="blindkey.cli.secrets:cmd_secrets_delete")
    _secrets_policy(actions)
    p = actions.add_parser(
        "diff",
        help="names missing or different: between two environments, or local and [remote]",
        description="Values are compared by a keyed hash made for this run; none is shown. "
        "Exit status as diff(1): 0 when the same, 1 when anything differs.",
    )
    p.add_argument("--from", dest="from_env", metavar="ENV", help="with --to: compare these")
    p.add_argument("--to", dest="to_env", metavar="ENV")
    _remote_options(p, writes=False)
    p.set_defaults(handler="blindkey.cli.secrets:cmd_secrets_diff")
    p = actions.add_parser("push", help="copy local values that are new or changed to [remote]")
    _remote_options(p, writes=True)
    p.set_defaults(handler="blindkey.cli.secrets:cmd_secrets_push")
    p = actions.add_parser("pull", help="copy [remote] values that are new or changed to local")
    _remote_options(p, writes=True)
    p.set_defaults(handler="blindkey.cli.secrets:cmd_secrets_pull")


def _environment(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "environment",
        help="list, switch and copy environments",
        description="Values are per environment; the proxy serves the active one.",
    )
    p = actions.add_parser("list", help="environments, the active one, and secrets in each")
    json_flag(p)
    p.set_defaults(handler="blindkey.cli.environment:cmd_environment_list")
    p = actions.add_parser("switch", help="make NAME the active environment")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--yes", action="store_true", help=f"confirm switching to {PRODUCTION}")
    p.set_defaults(handler="blindkey.cli.environment:cmd_environment_switch")
    p = actions.add_parser("copy", help="copy every value of FROM into TO (same names replaced)")
    p.add_argument("source", metavar="FROM")
    p.add_argument("target", metavar="TO")
    p.add_argument("--yes", action="store_true", help=f"confirm copying into {PRODUCTION}")
    approver_code(p)  # from production, or into an environment with grants
    p.set_defaults(handler="blindkey.cli.environment:cmd_environment_copy")


def _secrets_policy(actions: Any) -> None:
    p = actions.add_parser("policy", help="change a secret's policy (no value needed)")
    p.add_argument("name", metavar="NAME")
    for flag, what in (("host", "destination (an allowlist entry)"), ("agent", "agent")):
        for verb in ("add", "remove"):
            p.add_argument(
                f"--{verb}-{flag}", action="append", default=[], metavar=flag.upper(),
                help=f"{verb} this {what} (repeatable)",
            )  # fmt: skip
    p.add_argument("--tier", choices=TIERS, help="open, controlled or restricted")
    p.add_argument("--release", metavar="CHANNELS", help="proxy, env, exec, comma-separated")
    p.add_argument("--approvals", type=positive, metavar="N", help="approvers a grant needs")
    approver_code(p)
    p.add_argument("--yes", action="store_true", help="set a gated tier with no approver active")
    p.set_defaults(handler="blindkey.cli.policy:cmd_secrets_policy")
    p = actions.add_parser(
        "import", help="store NAME=VALUE lines of a .env file (values never echoed)"
    )
    p.add_argument("file", metavar="FILE", help="the .env file, or - for stdin")
    p.add_argument("--env", help="environment (default: the active one)")
    p.set_defaults(handler="blindkey.cli.policy:cmd_secrets_import")


def _allowlist(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "allowlist",
        help="where requests may go",
        description="Entries: host (https:443), host:port (https), "
        "*.example.com (subdomains), http://host[:port], https://host:port.",
    )
    p = actions.add_parser("add", help="permit one or more destinations")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    approver_code(p)
    p.set_defaults(handler="blindkey.cli.config:cmd_allowlist_add")
    p = actions.add_parser("remove", help="stop permitting destinations")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    p.set_defaults(handler="blindkey.cli.config:cmd_allowlist_remove")
    p = actions.add_parser("list", help="show the allowlist")
    json_flag(p)
    p.set_defaults(handler="blindkey.cli.config:cmd_allowlist_list")


def _agent(sub: Subcommands) -> None:
    actions = action_group(sub, "agent", help="agent identities and their tokens")
    p = actions.add_parser("add", help="create an agent and print its token once")
    p.add_argument("name", metavar="NAME")
    json_flag(p, 'print {"agent": NAME, "token": TOKEN}')
    p.set_defaults(handler="blindkey.cli.agent:cmd_agent_add")
    p = actions.add_parser("list", help="agents and whether they are revoked")
    json_flag(p)
    p.set_defaults(handler="blindkey.cli.agent:cmd_agent_list")
    p = actions.add_parser("revoke", help="revoke an agent's token")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler="blindkey.cli.agent:cmd_agent_revoke")


def _broker(sub: Subcommands) -> None:
    actions = action_group(sub, "broker", help="run the secret broker yourself")
    p = actions.add_parser("serve", help="serve the broker socket in the foreground")
    serve.add_arguments(p)
    p.set_defaults(handler="blindkey.cli.agent:cmd_broker_serve")


def _config(sub: Subcommands) -> None:
    actions = action_group(sub, "config", help="validate the configuration")
    p = actions.add_parser("check", help="validate config.toml (exit 1 with the reason if invalid)")
    p.add_argument("--config", metavar="FILE", help="file to check (default: the home's)")
    p.set_defaults(handler="blindkey.cli.config:cmd_config_check", needs_home=False)
    p = actions.add_parser(
        "approve", help="accept a hand-edited config.toml that widens the approved policy"
    )
    approver_code(p)
    p.set_defaults(handler="blindkey.cli.policy:cmd_config_approve")


def _doctor(sub: Subcommands) -> None:
    p = sub.add_parser(
        "doctor",
        help="check this installation: deployment, file modes, proxy, store, approvers, policy",
        description="One line per check: ok, warn or fail (exit 1 on any fail).",
    )
    json_flag(p)
    p.set_defaults(handler="blindkey.cli.doctor:cmd_doctor")


def _run(sub: Subcommands) -> None:
    p = sub.add_parser(
        "run",
        help="run an agent's command; --isolate: it cannot see blindkey's files",
        description="--isolate (Linux, bubblewrap): CMD runs as you, but blindkey's home, the "
        "broker's socket and the CA key are covered by empty directories and other processes "
        "are out of its sight; the proxy stays reachable on loopback. blindkey exits with "
        "CMD's status.",
    )
    p.add_argument(
        "--isolate", action="store_true", help="hide blindkey's files from CMD (bubblewrap)"
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(handler="blindkey.cli.run:cmd_run")


def build_parser() -> argparse.ArgumentParser:
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
    for add in (
        _proxy,
        _secrets,
        _environment,
        _allowlist,
        _agent,
        add_approval_commands,
        add_audit_commands,
        add_integration_commands,
        add_service_commands,
        _broker,
        _config,
        _doctor,
        _run,
    ):
        add(sub)
    return parser


def _handler(chosen: str | Handler) -> Handler:
    if not isinstance(chosen, str):
        return chosen
    module, _, name = chosen.partition(":")
    handler: Handler = getattr(importlib.import_module(module), name)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = resolve_paths()
    try:
        if getattr(args, "needs_home", True) and args.handler is not cmd_init:
            ensure_home(paths)
        return int(_handler(args.handler)(paths, args))
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
