"""The handlers of `blindkey config check` and `blindkey allowlist ...`: the allowlist lives
in config.toml, and every change to it is put in force in running proxies before the
command returns."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blindkey.broker.approvals_link import exit_for_refusal
from blindkey.broker.notify import put_in_force
from blindkey.config.console import emit_json, say, table
from blindkey.config.edit import string_array, toml_table
from blindkey.config.errors import BlindkeyError
from blindkey.config.hosts import AllowEntry, HostError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths


def cmd_config_check(paths: Paths, args: argparse.Namespace) -> int:
    file = Path(args.config) if args.config else paths.config_file
    settings = load_settings(file)
    say(
        f"{file}: ok ({len(settings.allowlist.entries)} allowlist entries, "
        f"{len(settings.secrets)} secret policies, backend {settings.backend}, "
        f"environment {settings.active_env})"
    )
    return 0


def _parse_entries(entries: list[str]) -> list[AllowEntry]:
    parsed = []
    for text in entries:
        try:
            parsed.append(AllowEntry.parse(text))
        except HostError as exc:
            raise BlindkeyError(f"invalid allowlist entry: {exc}") from exc
    return parsed


def _rewrite_hosts(
    paths: Paths,
    rewrite: Callable[[list[str]], list[str]],
    kind: str,
    args: argparse.Namespace,
) -> None:
    """Edit [allowlist] hosts under the config lock (accepted by the broker: a code when it
    widens), record it, then put the change in force."""
    from blindkey.broker.policy_link import change_policy

    def change(document: Any) -> None:
        section = toml_table(document, "allowlist")
        section["hosts"] = string_array(rewrite([str(h) for h in section.get("hosts", [])]))

    names = list(args.entries)
    settings = change_policy(
        paths, change, kind, names, getattr(args, "by", None), getattr(args, "code", None)
    )
    put_in_force(paths, settings, "the allowlist is saved", config=True)


@exit_for_refusal
def cmd_allowlist_add(paths: Paths, args: argparse.Namespace) -> int:
    entries = _parse_entries(args.entries)

    def add(current: list[str]) -> list[str]:
        known = {AllowEntry.parse(h) for h in current}
        added = []
        for entry in entries:
            if entry not in known:
                known.add(entry)
                added.append(entry.text)
        return current + added

    _rewrite_hosts(paths, add, "allowlist_add", args)
    say(f"allowlisted: {', '.join(e.text for e in entries)}")
    return 0


def cmd_allowlist_remove(paths: Paths, args: argparse.Namespace) -> int:
    drop = set(_parse_entries(args.entries))

    def remove(current: list[str]) -> list[str]:
        present = {AllowEntry.parse(h) for h in current}
        missing = [text for text in args.entries if AllowEntry.parse(text) not in present]
        if missing:
            listed = [text for text in args.entries if text not in missing]
            verb = "is" if len(listed) == 1 else "are"
            kept = f"; {', '.join(listed)} {verb} still listed" if listed else ""
            raise BlindkeyError(
                f"not on the allowlist: {', '.join(missing)}; nothing was removed{kept} "
                "(`blindkey allowlist list` shows the entries)"
            )
        return [h for h in current if AllowEntry.parse(h) not in drop]

    _rewrite_hosts(paths, remove, "allowlist_remove", args)
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
