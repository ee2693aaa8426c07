"""`blindkey secrets set|list|delete|diff|push|pull`: values in the configured backend,
metadata in config.toml, and a team store under [remote]."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import shlex
import sys
from collections.abc import Iterator
from typing import Any

from blindkey.broker.approvals_link import call, exit_for_refusal, with_code
from blindkey.broker.backends import SecretBackend, open_backend, open_openbao
from blindkey.broker.compare import Difference, compare, comparison_key, keyed_digests
from blindkey.broker.notify import put_in_force
from blindkey.broker.policy_link import change_policy, record
from blindkey.config.console import emit_json, say, warn
from blindkey.config.console import table as print_table
from blindkey.config.edit import string_array, toml_table
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.hosts import AllowEntry, HostError
from blindkey.config.loader import load_settings
from blindkey.config.model import (
    MAX_VALUE_BYTES,
    MIN_REDACTABLE,
    RELEASE_CHANNELS,
    SECRET_NAME,
    Settings,
)
from blindkey.config.paths import Paths
from blindkey.config.stores import PRODUCTION, OpenBaoSettings


def check_name(name: str) -> str:
    # fullmatch: the pattern's `$` would also accept a trailing newline.
    if not SECRET_NAME.fullmatch(name):
        raise BlindkeyError(
            f"invalid secret name {name!r}: start with a letter or '_', then letters, digits, "
            "'_', '.', '-' (at most 128 characters)"
        )
    return name


def pick_env(settings: Settings, requested: str | None) -> str:
    env = requested or settings.active_env
    if env not in settings.environments:
        raise BlindkeyError(
            f"unknown environment {env!r}; known: {', '.join(settings.environments)}"
        )
    return env


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


@contextlib.contextmanager
def opened(backend: SecretBackend) -> Iterator[SecretBackend]:
    try:
        yield backend
    finally:
        backend.close()


def local_store(paths: Paths, settings: Settings) -> SecretBackend:
    return open_backend(paths, settings)


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


# Shorter values match ordinary text: redacting them would be unreliable and mangle output.


@exit_for_refusal
def cmd_secrets_set(paths: Paths, args: argparse.Namespace) -> int:
    name, value = args.name, None
    if "=" in name:
        name, value = name.split("=", 1)
        warn(f"the value of {name} is now in your shell history; prefer piping it on stdin")
    check_name(name)
    settings = load_settings(paths.config_file)
    env = pick_env(settings, args.env)
    bound = []
    for host in args.host:
        try:
            bound.append(AllowEntry.binding(host))
        except HostError as exc:
            raise BlindkeyError(f"--host: {exc}") from exc
    if value is None:
        value = _read_value(name)
    if not value:
        raise BlindkeyError(f"empty value for {name}: nothing stored")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise BlindkeyError(
            f"the value of {name} is {size} bytes: blindkey redacts values of up to "
            f"{MAX_VALUE_BYTES} bytes (PEM keys and service-account JSON fit). Nothing stored"
        )
    short = len(value) < MIN_REDACTABLE
    if short and not args.allow_short:
        raise BlindkeyError(
            f"the value of {name} is {len(value)} characters: values shorter than "
            f"{MIN_REDACTABLE} match ordinary text and cannot be redacted safely. Nothing "
            "stored; use the real key, or --allow-short to store it anyway (the audit then "
            "marks every use)"
        )
    release = _release_channels(args.release)
    edits_config = bool(
        args.tier
        or args.host
        or args.agent
        or release
        or args.approvals
        or short
        or settings.policy(name).allow_short
    )
    if args.tier or args.approvals:
        # The broker keeps each secret's tier floor: lowering it needs an approver's code.
        floor = with_code(
            args.code,
            f"Code of approver {args.by or 'default'} (consent to lowering {name}'s protection)",
            lambda code: call(paths, "policy", name=name, tier=args.tier,
                              approvals=args.approvals, by=args.by, code=code,
                              anyway=args.yes or None),
            required=False,
        )  # fmt: skip
        if args.tier in ("controlled", "restricted") and not floor["approvable"]:
            warn(
                f"no approver is active: nobody can approve {name} yet, and whoever enrols "
                "first can. Enrol yours now: blindkey totp enroll && blindkey totp confirm"
            )
    if edits_config:

        def change(document: Any) -> None:
            section = toml_table(document, "secrets", name)
            if args.tier:
                section["tier"] = args.tier
            if args.host:
                section["hosts"] = string_array(args.host)
            if args.agent:
                section["agents"] = string_array(args.agent)
            if release:
                section["release"] = string_array(release)
            if args.approvals:
                section["approvals"] = args.approvals
            if short:
                section["allow_short"] = True
            elif "allow_short" in section:
                del section["allow_short"]

        settings = change_policy(paths, change, "secret_set", [name], args.by, args.code)
    else:
        record(paths, "secret_set", [name], via="cli")
    with opened(local_store(paths, settings)) as store:
        store.set(env, name, value)
    put_in_force(paths, settings, f"{name} is stored in {env}", [(env, name)], config=edits_config)
    allowlist = settings.allowlist.entries
    for pattern in bound:
        if not any(entry.overlaps(pattern) for entry in allowlist):
            # Stored all the same: the allowlist may well come next.
            warn(
                f"{pattern} is not on the allowlist: the proxy refuses every call to it "
                f"until `blindkey allowlist add {shlex.quote(str(pattern))}`"
            )
    policy = settings.policy(name)
    hosts = ", ".join(str(h) for h in policy.hosts) or "any allowlisted host"
    say(f"stored {name} in {env} (tier {policy.tier}; hosts: {hosts})")
    return 0


def _release_channels(given: str | None) -> list[str]:
    """`--release proxy,env` as a list; empty when not given (the policy stays as it is)."""
    if given is None:
        return []
    channels = [part.strip() for part in given.split(",") if part.strip()]
    unknown = [c for c in channels if c not in RELEASE_CHANNELS]
    if unknown or not channels:
        raise UsageError(
            f"--release {given!r}: a comma-separated list of {', '.join(RELEASE_CHANNELS)}"
        )
    return list(dict.fromkeys(channels))


def inventory(store: SecretBackend, settings: Settings) -> dict[str, set[str]]:
    return {env: store.names(env) for env in settings.environments}


def cmd_secrets_list(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    with opened(local_store(paths, settings)) as store:
        held = inventory(store, settings)
    names = sorted({n for found in held.values() for n in found} | set(settings.secrets))
    rows = []
    for name in names:
        policy = settings.policy(name)
        rows.append(
            {
                "name": name,
                "envs": [env for env in settings.environments if name in held[env]],
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
        print_table(
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


@exit_for_refusal
def cmd_secrets_delete(paths: Paths, args: argparse.Namespace) -> int:
    check_name(args.name)
    settings = load_settings(paths.config_file)
    env = pick_env(settings, args.env)
    with opened(local_store(paths, settings)) as store:
        held = inventory(store, settings)
        if args.name not in held.get(env, set()):
            raise BlindkeyError(
                f"no secret named {args.name} in {env}; see `blindkey secrets list`"
            )
        last = not any(args.name in found for other, found in held.items() if other != env)
        # Deleting a controlled or restricted secret needs an approver's code.
        with_code(
            args.code,
            f"Code of approver {args.by or 'default'} (consent to deleting {args.name})",
            lambda code: call(paths, "forget", name=args.name, env=env, last=last or None,
                              by=args.by, code=code),
            required=False,
        )  # fmt: skip
        if not store.delete(env, args.name):
            raise BlindkeyError(
                f"no secret named {args.name} in {env}; see `blindkey secrets list`"
            )
        still_used = any(args.name in found for found in inventory(store, settings).values())
    if not still_used:

        def change(document: Any) -> None:
            secrets = document.get("secrets")
            if secrets is not None and args.name in secrets:
                del secrets[args.name]

        settings = change_policy(paths, change, "secret_delete", [args.name], args.by, None)
    else:
        record(paths, "secret_delete", [args.name])
    done = f"{args.name} is deleted from {env}"
    put_in_force(paths, settings, done, [(env, args.name)], config=not still_used)
    say(f"deleted {args.name} from {env}")
    return 0


def _remote(settings: Settings) -> OpenBaoSettings:
    if settings.remote is None:
        raise BlindkeyError(
            'no team store: add [remote] with address = "https://..." to config.toml '
            "(the same keys as an openbao [backend])"
        )
    return settings.remote


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
    if (args.from_env is None) != (args.to_env is None):
        raise UsageError("give both --from ENV and --to ENV, or neither to compare with [remote]")
    settings = load_settings(paths.config_file)
    key = comparison_key()
    if args.from_env is not None:
        source, target = pick_env(settings, args.from_env), pick_env(settings, args.to_env)
        with opened(local_store(paths, settings)) as store:
            diff = compare(
                keyed_digests(store.values(source), key), keyed_digests(store.values(target), key)
            )
        result = {
            "from": source,
            "to": target,
            "only_in_from": list(diff.only_source),
            "only_in_to": list(diff.only_target),
            "differ": list(diff.differ),
        }
        if args.json:
            emit_json(result)
        elif diff.empty:
            say(f"{source} and {target} hold the same names and values")
        else:
            _print_diff(diff, source, target)
        return SAME if diff.empty else DIFFERENT
    envs = _envs(settings, args)
    remote = open_openbao(_remote(settings))
    diffs = []
    with opened(local_store(paths, settings)) as store, opened(remote):
        for env in envs:
            local, team = store.values(env), remote.values(env)
            diffs.append((env, compare(keyed_digests(local, key), keyed_digests(team, key))))
    status = SAME if all(diff.empty for _, diff in diffs) else DIFFERENT
    if args.json:
        emit_json(
            [
                {
                    "env": env,
                    "only_in_local": list(diff.only_source),
                    "only_in_remote": list(diff.only_target),
                    "differ": list(diff.differ),
                }
                for env, diff in diffs
            ]
        )
        return status
    for env, diff in diffs:
        say(f"{env}: local vs {remote.describe()}")
        if diff.empty:
            say("  same names and values")
        _print_diff(diff, "local", "remote")
    return status


def _envs(settings: Settings, args: argparse.Namespace) -> list[str]:
    if getattr(args, "all", False):
        return list(settings.environments)
    return [pick_env(settings, args.env)]


def transfer(paths: Paths, args: argparse.Namespace, *, push: bool) -> int:
    settings = load_settings(paths.config_file)
    remote = open_openbao(_remote(settings))
    key = comparison_key()
    reports: list[dict[str, Any]] = []
    pulled: list[tuple[str, str]] = []
    with opened(local_store(paths, settings)) as local, opened(remote):
        source, target = (local, remote) if push else (remote, local)
        where = remote.describe() if push else "the local store"
        for env in _envs(settings, args):
            values = source.values(env)
            diff = compare(keyed_digests(values, key), keyed_digests(target.values(env), key))
            writes = [*diff.only_source, *diff.differ]
            if writes and not args.dry_run and env == PRODUCTION:
                confirm(f"write {len(writes)} values into {PRODUCTION} in {where}", args.yes)
            if not args.dry_run:
                for name in writes:
                    target.set(env, name, values[name])
                if not push:
                    pulled += [(env, name) for name in writes]
            reports.append(
                {
                    "env": env,
                    "created": list(diff.only_source),
                    "updated": list(diff.differ),
                    "unchanged": len(diff.same),
                    "only_in_target": list(diff.only_target),
                    "dry_run": bool(args.dry_run),
                }
            )
    if pulled:
        put_in_force(paths, settings, f"{len(pulled)} pulled values are stored", pulled)
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
    return transfer(paths, args, push=True)


def cmd_secrets_pull(paths: Paths, args: argparse.Namespace) -> int:
    return transfer(paths, args, push=False)
