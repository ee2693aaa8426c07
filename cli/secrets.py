"""`blindkey secrets set|list|delete|policy|import|diff|push|pull`: values in the configured
backend, metadata in config.toml, and a team store under [remote].

Each handler reads its arguments, calls a use case of broker/ (secrets_ops, secrets_sync)
and prints; the use cases are imported when the command runs, so the tree costs nothing.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blindkey.cli.approvals import approver_code, exit_for_refusal
from blindkey.cli.ca import add_placeholder_command
from blindkey.config.arguments import Subcommands, action_group, json_flag, positive
from blindkey.config.console import emit_json, say, warn
from blindkey.config.console import table as print_table
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.model import MIN_REDACTABLE
from blindkey.config.paths import Paths
from blindkey.config.secrets_table import OAUTH2_GRANTS, SECRET_KINDS, TIERS
from blindkey.config.stores import PRODUCTION

if TYPE_CHECKING:
    from blindkey.broker.compare import Difference


def confirm(action: str, yes: bool) -> None:
    """Ask on a terminal; elsewhere (scripts, agents) only --yes will do."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise BlindkeyError(f"{action}: confirm with --yes (no terminal to ask on)")
    sys.stderr.write(f"{action[0].upper()}{action[1:]}? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise BlindkeyError(f"{action}: not confirmed; nothing changed")


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        value = getpass.getpass(f"Value for {name} (input hidden): ")
    else:
        value = sys.stdin.read()
        if value.endswith("\n"):
            value = value[:-1]
            if value.endswith("\r"):
                value = value[:-1]
    if not value:
        raise BlindkeyError(f"empty value for {name}: nothing stored")
    return value


@exit_for_refusal
def cmd_secrets_set(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.secrets_ops import NewSecret, store_secret

    name, value = args.name, None
    if "=" in name:
        name, value = name.split("=", 1)
        warn(f"the value of {name} is now in your shell history; prefer piping it on stdin")
    new = NewSecret(
        name, env=args.env, tier=args.tier, hosts=args.host, agents=args.agent,
        release=args.release, approvals=args.approvals, allow_short=args.allow_short,
        kind=args.kind, credential=_credential(args), region=args.region, by=args.by,
        code=args.code, anyway=args.yes,
    )  # fmt: skip
    stored = store_secret(paths, new, lambda: _read_value(name) if value is None else value)
    hosts = ", ".join(str(h) for h in stored.policy.hosts) or "any allowlisted host"
    say(f"stored {stored.name} in {stored.env} (tier {stored.policy.tier}; hosts: {hosts})")
    return 0


def cmd_secrets_list(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.secrets_ops import secret_rows

    rows = secret_rows(paths)
    if args.json:
        emit_json(rows)
    elif not rows:
        say("no secrets; add one with: blindkey secrets set NAME")
    else:
        print_table(
            [[r["name"], ",".join(r["envs"]) or "-", r["tier"], ",".join(r["hosts"]) or "*",
              ",".join(r["agents"])] for r in rows],
            ["NAME", "ENVIRONMENTS", "TIER", "HOSTS", "AGENTS"],
        )  # fmt: skip
    return 0


@exit_for_refusal
def cmd_secrets_delete(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.secrets_ops import delete_secret

    env = delete_secret(paths, args.name, args.env, args.by, args.code)
    say(f"deleted {args.name} from {env}")
    return 0


@exit_for_refusal
def cmd_secrets_policy(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.secrets_ops import PolicyChange, change_secret_policy

    asked = PolicyChange(
        args.name, add_hosts=args.add_host, remove_hosts=args.remove_host,
        add_agents=args.add_agent, remove_agents=args.remove_agent, tier=args.tier,
        release=args.release, approvals=args.approvals, by=args.by, code=args.code,
    )  # fmt: skip
    policy = change_secret_policy(paths, asked)
    hosts = ", ".join(str(h) for h in policy.hosts) or "any allowlisted host"
    say(
        f"{args.name}: tier {policy.tier}; hosts: {hosts}; agents: "
        f"{', '.join(policy.agents) or 'none'}; release: {', '.join(policy.release)}"
    )
    return 0


def cmd_secrets_import(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.dotenv import parse_dotenv
    from blindkey.broker.secrets_ops import import_values

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BlindkeyError(f"cannot read {args.file}: {exc}") from None
    env, names = import_values(paths, parse_dotenv(text), args.env)
    say(f"stored {len(names)} secrets in {env}: {', '.join(names)}")
    return 0


def _print_diff(diff: Difference, left: str, right: str) -> None:
    for name in diff.only_source:
        say(f"- {name}  (only in {left})")
    for name in diff.only_target:
        say(f"+ {name}  (only in {right})")
    for name in diff.differ:
        say(f"~ {name}  (values differ)")


# As diff(1): a script can ask "do they differ?" by the exit status alone. Errors stay 1
# with a `blindkey:` line on stderr; a difference prints no such line.
SAME, DIFFERENT = 0, 1


def cmd_secrets_diff(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.secrets_sync import compare_envs, compare_remote

    if (args.from_env is None) != (args.to_env is None):
        raise UsageError("give both --from ENV and --to ENV, or neither to compare with [remote]")
    if args.from_env is not None:
        source, target, diff = compare_envs(paths, args.from_env, args.to_env)
        if args.json:
            emit_json(
                {"from": source, "to": target, "only_in_from": list(diff.only_source),
                 "only_in_to": list(diff.only_target), "differ": list(diff.differ)}
            )  # fmt: skip
        elif diff.empty:
            say(f"{source} and {target} hold the same names and values")
        else:
            _print_diff(diff, source, target)
        return SAME if diff.empty else DIFFERENT
    remote, diffs = compare_remote(paths, args.env, args.all)
    status = SAME if all(diff.empty for _, diff in diffs) else DIFFERENT
    if args.json:
        emit_json(
            [{"env": env, "only_in_local": list(diff.only_source),
              "only_in_remote": list(diff.only_target), "differ": list(diff.differ)}
             for env, diff in diffs]
        )  # fmt: skip
        return status
    for env, diff in diffs:
        say(f"{env}: local vs {remote}")
        if diff.empty:
            say("  same names and values")
        _print_diff(diff, "local", "remote")
    return status


def _transfer(paths: Paths, args: argparse.Namespace, *, push: bool) -> int:
    from blindkey.broker.secrets_sync import transfer

    where, reports = transfer(
        paths, args.env, args.all, push=push, dry_run=bool(args.dry_run),
        confirm=lambda action: confirm(action, args.yes),
    )  # fmt: skip
    if args.json:
        emit_json(reports)
        return 0
    dry = " (dry run: nothing written)" if args.dry_run else ""
    for r in reports:
        say(
            f"{'push' if push else 'pull'} {r['env']} into {where}{dry}: "
            f"{len(r['created'])} new, {len(r['updated'])} changed, {r['unchanged']} unchanged, "
            f"{len(r['only_in_target'])} only there (left alone)"
        )
        for name in r["created"]:
            say(f"  + {name}")
        for name in r["updated"]:
            say(f"  ~ {name}")
    return 0


def cmd_secrets_push(paths: Paths, args: argparse.Namespace) -> int:
    return _transfer(paths, args, push=True)


def cmd_secrets_pull(paths: Paths, args: argparse.Namespace) -> int:
    return _transfer(paths, args, push=False)


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


def add_commands(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "secrets",
        help="store, list and delete secret values",
        description="Values live in the vault; metadata in config.toml.",
    )
    _set_parser(actions)
    p = actions.add_parser("list", help="names, environments and policy (never values)")
    json_flag(p)
    p.set_defaults(handler=cmd_secrets_list)
    p = actions.add_parser("delete", help="delete a value")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--env", help="environment (default: the active one)")
    approver_code(p)
    p.set_defaults(handler=cmd_secrets_delete)
    _secrets_policy(actions)
    add_placeholder_command(actions)
    p = actions.add_parser(
        "diff",
        help="names missing or different: between two environments, or local and [remote]",
        description="Values are compared by a keyed hash made for this run; none is shown. "
        "Exit status as diff(1): 0 when the same, 1 when anything differs.",
    )
    p.add_argument("--from", dest="from_env", metavar="ENV", help="with --to: compare these")
    p.add_argument("--to", dest="to_env", metavar="ENV")
    _remote_options(p, writes=False)
    p.set_defaults(handler=cmd_secrets_diff)
    p = actions.add_parser("push", help="copy local values that are new or changed to [remote]")
    _remote_options(p, writes=True)
    p.set_defaults(handler=cmd_secrets_push)
    p = actions.add_parser("pull", help="copy [remote] values that are new or changed to local")
    _remote_options(p, writes=True)
    p.set_defaults(handler=cmd_secrets_pull)


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
    p.set_defaults(handler=cmd_secrets_policy)
    p = actions.add_parser(
        "import", help="store NAME=VALUE lines of a .env file (values never echoed)"
    )
    p.add_argument("file", metavar="FILE", help="the .env file, or - for stdin")
    p.add_argument("--env", help="environment (default: the active one)")
    p.set_defaults(handler=cmd_secrets_import)


def _set_parser(actions: Any) -> None:
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
    _kind_options(p)
    p.set_defaults(handler=cmd_secrets_set)


CREDENTIAL_FLAGS = {
    "token_url": "oauth2: the token endpoint (it must be on the allowlist)",
    "client_id": "oauth2: the client id",
    "scope": "oauth2: the scope to ask for",
    "app_id": "github-app: the app's id",
    "installation_id": "github-app: the installation to act as",
    "role_arn": "aws: assume this role (STS) with the stored keys and sign with its keys",
}


def _kind_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind",
        choices=SECRET_KINDS,
        help="value (default): injected as stored; oauth2: the value is a refresh token (or "
        "client secret) and the proxy injects access tokens; github-app: the value is the "
        "app's private key (PEM) and the proxy injects installation tokens; aws: the value is "
        'a JSON object {"access_key_id", "secret_access_key"[, "session_token"]} that signs '
        "requests (X-AS-Inject-Sigv4) and is never sent",
    )
    for key, text in CREDENTIAL_FLAGS.items():
        p.add_argument("--" + key.replace("_", "-"), dest=key, metavar="TEXT", help=text)
    p.add_argument("--grant", choices=OAUTH2_GRANTS, help="oauth2: refresh_token (default)")
    p.add_argument(
        "--region",
        metavar="R",
        help="aws: the region to sign for when the host does not name one (default us-east-1)",
    )


def _credential(args: argparse.Namespace) -> dict[str, str]:
    keys = (*CREDENTIAL_FLAGS, "grant")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
