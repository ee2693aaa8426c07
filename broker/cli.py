"""`blindkey secrets|agent|allowlist|broker`: the human's side of the broker's data."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time
from pathlib import Path
from typing import Any

from broker.agents import AgentStore
from broker.vault import FileVault
from config.console import emit_json, say, table, warn
from config.edit import edit_config, string_array
from config.edit import table as toml_table
from config.errors import BlindkeyError, UsageError
from config.hosts import AllowEntry, HostError, HostPattern
from config.paths import Paths
from config.settings import SECRET_NAME, TIERS, Settings, load_settings


def _check_name(name: str) -> str:
    # fullmatch: the pattern's `$` would also accept a trailing newline.
    if not SECRET_NAME.fullmatch(name):
        raise BlindkeyError(
            f"invalid secret name {name!r}: start with a letter or '_', then letters, digits, "
            "'_', '.', '-' (at most 128 characters)"
        )
    return name


def _env(settings: Settings, requested: str | None) -> str:
    env = requested or settings.active_env
    if env not in settings.environments:
        raise BlindkeyError(
            f"unknown environment {env!r}; known: {', '.join(settings.environments)}"
        )
    return env


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


def cmd_secrets_set(paths: Paths, args: argparse.Namespace) -> int:
    name, value = args.name, None
    if "=" in name:
        name, value = name.split("=", 1)
        warn(f"the value of {name} is now in your shell history; prefer piping it on stdin")
    _check_name(name)
    settings = load_settings(paths.config_file)
    env = _env(settings, args.env)
    for host in args.host:
        try:
            HostPattern.parse(host)
        except HostError as exc:
            raise BlindkeyError(f"--host: {exc}") from exc
    if value is None:
        value = _read_value(name)
    if not value:
        raise BlindkeyError(f"empty value for {name}: nothing stored")
    if args.tier or args.host or args.agent:

        def change(document: Any) -> None:
            section = toml_table(document, "secrets", name)
            if args.tier:
                section["tier"] = args.tier
            if args.host:
                section["hosts"] = string_array(args.host)
            if args.agent:
                section["agents"] = string_array(args.agent)

        settings = edit_config(paths.config_file, paths.lock_file, change)
    FileVault(paths).set(env, name, value)
    policy = settings.policy(name)
    hosts = ", ".join(str(h) for h in policy.hosts) or "any allowlisted host"
    say(f"stored {name} in {env} (tier {policy.tier}; hosts: {hosts})")
    return 0


def cmd_secrets_list(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    data = FileVault(paths).load()
    names = sorted({n for values in data.values() for n in values} | set(settings.secrets))
    rows = []
    for name in names:
        policy = settings.policy(name)
        rows.append(
            {
                "name": name,
                "envs": [env for env in settings.environments if name in data.get(env, {})],
                "tier": policy.tier,
                "hosts": [str(h) for h in policy.hosts],
                "agents": list(policy.agents),
                "release": list(policy.release),
            }
        )
    if args.json:
        emit_json(rows)
    elif not rows:
        say("no secrets; add one with: blindkey secrets set NAME")
    else:
        table(
            [
                [
                    r["name"],
                    ",".join(r["envs"]) or "-",
                    r["tier"],
                    ",".join(r["hosts"]) or "*",
                    ",".join(r["agents"]),
                ]
                for r in rows
            ],
            ["NAME", "ENVIRONMENTS", "TIER", "HOSTS", "AGENTS"],
        )
    return 0


def cmd_secrets_delete(paths: Paths, args: argparse.Namespace) -> int:
    _check_name(args.name)
    settings = load_settings(paths.config_file)
    env = _env(settings, args.env)
    vault = FileVault(paths)
    if not vault.delete(env, args.name):
        raise BlindkeyError(f"no secret named {args.name} in {env}; see `blindkey secrets list`")
    if not any(args.name in values for values in vault.load().values()):

        def change(document: Any) -> None:
            secrets = document.get("secrets")
            if secrets is not None and args.name in secrets:
                del secrets[args.name]

        edit_config(paths.config_file, paths.lock_file, change)
    say(f"deleted {args.name} from {env}")
    return 0


def cmd_secrets_diff(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    source, target = _env(settings, args.from_env), _env(settings, args.to_env)
    data = FileVault(paths).load()
    left, right = data.get(source, {}), data.get(target, {})
    result = {
        "from": source,
        "to": target,
        "only_in_from": sorted(set(left) - set(right)),
        "only_in_to": sorted(set(right) - set(left)),
        "differ": sorted(n for n in set(left) & set(right) if left[n] != right[n]),
    }
    if args.json:
        emit_json(result)
    else:
        for name in result["only_in_from"]:
            say(f"- {name}  (only in {source})")
        for name in result["only_in_to"]:
            say(f"+ {name}  (only in {target})")
        for name in result["differ"]:
            say(f"~ {name}  (values differ)")
        if not any(result[k] for k in ("only_in_from", "only_in_to", "differ")):
            say(f"{source} and {target} hold the same names and values")
    return 0


def _parse_entries(entries: list[str]) -> list[AllowEntry]:
    parsed = []
    for text in entries:
        try:
            parsed.append(AllowEntry.parse(text))
        except HostError as exc:
            raise BlindkeyError(f"invalid allowlist entry: {exc}") from exc
    return parsed


def cmd_allowlist_add(paths: Paths, args: argparse.Namespace) -> int:
    entries = _parse_entries(args.entries)

    def change(document: Any) -> None:
        section = toml_table(document, "allowlist")
        current = [str(h) for h in section.get("hosts", [])]
        known = {AllowEntry.parse(h) for h in current}
        added = []
        for entry in entries:
            if entry not in known:
                known.add(entry)
                added.append(entry.text)
        section["hosts"] = string_array(current + added)

    edit_config(paths.config_file, paths.lock_file, change)
    say(f"allowlisted: {', '.join(e.text for e in entries)}")
    return 0


def cmd_allowlist_remove(paths: Paths, args: argparse.Namespace) -> int:
    entries = _parse_entries(args.entries)
    drop = set(entries)

    def change(document: Any) -> None:
        section = toml_table(document, "allowlist")
        current = [str(h) for h in section.get("hosts", [])]
        present = {AllowEntry.parse(h) for h in current}
        missing = [e.text for e in entries if e not in present]
        if missing:
            raise BlindkeyError(f"not on the allowlist: {', '.join(missing)}")
        section["hosts"] = string_array([h for h in current if AllowEntry.parse(h) not in drop])

    edit_config(paths.config_file, paths.lock_file, change)
    say(f"removed: {', '.join(sorted(args.entries))}")
    return 0


def cmd_allowlist_list(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    rows = [
        {"entry": e.text, "scheme": e.scheme, "host": str(e.pattern), "port": e.port}
        for e in settings.allowlist.entries
    ]
    if args.json:
        emit_json(rows)
    elif not rows:
        say("the allowlist is empty; add a host with: blindkey allowlist add api.github.com")
    else:
        table(
            [[r["entry"], r["scheme"], r["host"], str(r["port"])] for r in rows],
            ["ENTRY", "SCHEME", "HOST", "PORT"],
        )
    return 0


def _agents(paths: Paths) -> AgentStore:
    return AgentStore(paths.agents_file, paths.lock_file)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def cmd_agent_add(paths: Paths, args: argparse.Namespace) -> int:
    token = _agents(paths).add(args.name)
    if args.json:
        emit_json({"agent": args.name, "token": token})
    else:
        say(f"agent {args.name} added. Its token, shown this once:\n\n  {token}\n")
        say("Send it as the X-AS-Agent-Token header; only its hash is stored.")
    return 0


def cmd_agent_list(paths: Paths, args: argparse.Namespace) -> int:
    rows = [
        {"agent": a.name, "created": _iso(a.created), "revoked": _iso(a.revoked)}
        for a in sorted(_agents(paths).load().values(), key=lambda a: a.name)
    ]
    if args.json:
        emit_json(rows)
    elif not rows:
        say("no agents; add one with: blindkey agent add NAME")
    else:
        table(
            [[r["agent"], r["created"] or "", r["revoked"] or "active"] for r in rows],
            ["AGENT", "CREATED", "REVOKED"],
        )
    return 0


def cmd_agent_revoke(paths: Paths, args: argparse.Namespace) -> int:
    _agents(paths).revoke(args.name)
    say(f"agent {args.name} revoked; its token stops working within a second")
    return 0


def cmd_broker_serve(paths: Paths, args: argparse.Namespace) -> int:
    from broker.server import serve_broker

    socket_path = Path(args.socket) if args.socket else paths.broker_socket
    uids = frozenset({os.getuid(), *args.allow_uid})
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        pass
    asyncio.run(serve_broker(paths, socket_path, uids))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = sub.add_parser(
        "secrets",
        help="store, list and delete secret values",
        description="Values live in the vault; metadata in config.toml.",
    )
    s = secrets.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = s.add_parser(
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
        help="bind the secret to this host (repeatable; *.example.com allowed)",
    )
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME",
        help="only this agent may use it (repeatable; default: every agent)",
    )
    p.set_defaults(func=cmd_secrets_set)
    p = s.add_parser("list", help="names, environments and policy (never values)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_secrets_list)
    p = s.add_parser("delete", help="delete a value")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--env", help="environment (default: the active one)")
    p.set_defaults(func=cmd_secrets_delete)
    p = s.add_parser("diff", help="names missing or different between two environments")
    p.add_argument("--from", dest="from_env", required=True, metavar="ENV")
    p.add_argument("--to", dest="to_env", required=True, metavar="ENV")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_secrets_diff)

    allow = sub.add_parser(
        "allowlist",
        help="where requests may go",
        description="Entries: host (https:443), host:port (https), "
        "*.example.com (subdomains), http://host[:port], https://host:port.",
    )
    a = allow.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = a.add_parser("add", help="permit one or more destinations")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    p.set_defaults(func=cmd_allowlist_add)
    p = a.add_parser("remove", help="stop permitting destinations")
    p.add_argument("entries", nargs="+", metavar="ENTRY")
    p.set_defaults(func=cmd_allowlist_remove)
    p = a.add_parser("list", help="show the allowlist")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_allowlist_list)

    agent = sub.add_parser("agent", help="agent identities and their tokens")
    g = agent.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = g.add_parser("add", help="create an agent and print its token once")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help='print {"agent": NAME, "token": TOKEN}')
    p.set_defaults(func=cmd_agent_add)
    p = g.add_parser("list", help="agents and whether they are revoked")
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.set_defaults(func=cmd_agent_list)
    p = g.add_parser("revoke", help="revoke an agent's token")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_agent_revoke)

    broker = sub.add_parser("broker", help="run the secret broker yourself")
    b = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = b.add_parser("serve", help="serve the broker socket in the foreground")
    p.add_argument("--socket", help="socket path (default: the runtime directory)")
    p.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="also accept connections from this uid (repeatable)",
    )
    p.set_defaults(func=cmd_broker_serve)


__all__ = ["UsageError", "register"]
