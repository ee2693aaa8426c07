"""`blindkey secrets policy`, `secrets import` and `config approve`: policy without a value,
many values in one change, and a human's consent to a hand-edited config.toml."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from blindkey.broker.approvals_link import exit_for_refusal
from blindkey.broker.notify import put_in_force
from blindkey.broker.policy_link import accept, change_policy, record
from blindkey.cli.secrets import (
    _release_channels,
    check_name,
    local_store,
    opened,
    pick_env,
)
from blindkey.config.console import say
from blindkey.config.edit import string_array, toml_table
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.hosts import AllowEntry, HostError
from blindkey.config.loader import load_settings
from blindkey.config.model import AGENT_NAME, MAX_VALUE_BYTES, MIN_REDACTABLE, SECRET_NAME
from blindkey.config.paths import Paths


def _bindings(flag: str, texts: list[str]) -> list[AllowEntry]:
    try:
        return [AllowEntry.binding(text) for text in texts]
    except HostError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _agents(flag: str, names: list[str]) -> list[str]:
    for name in names:
        if name != "*" and not AGENT_NAME.fullmatch(name):
            raise UsageError(f"{flag}: {name!r} is not an agent name (or '*')")
    return names


def _edit_list(current: list[str], add: list[str], remove: list[str], what: str) -> list[str]:
    missing = [r for r in remove if r not in current]
    if missing:
        raise BlindkeyError(f"not among the {what}: {', '.join(missing)}; nothing changed")
    kept = [c for c in current if c not in remove]
    return kept + [a for a in add if a not in kept]


@exit_for_refusal
def cmd_secrets_policy(paths: Paths, args: argparse.Namespace) -> int:
    name = check_name(args.name)
    add_hosts = [str(e) for e in _bindings("--add-host", args.add_host)]
    drop_hosts = [str(e) for e in _bindings("--remove-host", args.remove_host)]
    add_agents = _agents("--add-agent", args.add_agent)
    drop_agents = _agents("--remove-agent", args.remove_agent)
    release = _release_channels(args.release)
    if not (
        add_hosts
        or drop_hosts
        or add_agents
        or drop_agents
        or release
        or args.tier
        or args.approvals
    ):
        raise UsageError(
            "nothing to change: give --add-host, --remove-host, --add-agent, "
            "--remove-agent, --tier, --release or --approvals"
        )

    def change(document: Any) -> None:
        section = toml_table(document, "secrets", name)
        hosts = [str(AllowEntry.binding(str(h))) for h in section.get("hosts", [])]
        if add_hosts or drop_hosts:
            section["hosts"] = string_array(_edit_list(hosts, add_hosts, drop_hosts, "hosts"))
        if add_agents or drop_agents:
            agents = [str(a) for a in section.get("agents", ["*"])]
            section["agents"] = string_array(_edit_list(agents, add_agents, drop_agents, "agents"))
        if release:
            section["release"] = string_array(release)
        if args.tier:
            section["tier"] = args.tier
        if args.approvals:
            section["approvals"] = args.approvals

    settings = change_policy(paths, change, "secret_policy", [name], args.by, args.code)
    put_in_force(paths, settings, f"the policy of {name} is saved", config=True)
    policy = settings.policy(name)
    hosts = ", ".join(str(h) for h in policy.hosts) or "any allowlisted host"
    say(
        f"{name}: tier {policy.tier}; hosts: {hosts}; agents: {', '.join(policy.agents) or 'none'}"
        f"; release: {', '.join(policy.release)}"
    )
    return 0


_LINE = re.compile(r"^(?:export[ \t]+)?([^=\s]+)[ \t]*=[ \t]*(.*)\Z", re.DOTALL)


def _value(raw: str) -> str | None:
    """The value of a .env line's right side; None when a quote is not closed."""
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = raw.find(quote, 1)
        while quote == '"' and end > 0 and raw[end - 1] == "\\":
            end = raw.find(quote, end + 1)
        if end < 0 or raw[end + 1 :].strip()[:1] not in ("", "#"):
            return None
        inner = raw[1:end]
        if quote == '"':
            inner = inner.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        return inner
    return raw.split(" #", 1)[0].strip()


def parse_dotenv(text: str) -> dict[str, str]:
    """NAME=VALUE lines; every bad line named by its number (never its content)."""
    values: dict[str, str] = {}
    problems: list[str] = []
    # Only "\n" ends a line: splitlines() would also cut at characters a quoted value holds.
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.removesuffix("\r").strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            problems.append(f"line {number}: not NAME=VALUE")
            continue
        name, value = match.group(1), _value(match.group(2))
        if not SECRET_NAME.fullmatch(name):
            problems.append(f"line {number}: {name[:40]!r} is not a secret name")
        elif value is None:
            problems.append(f"line {number}: {name}: a quote is not closed")
        elif len(value) < MIN_REDACTABLE:
            problems.append(
                f"line {number}: {name}: shorter than {MIN_REDACTABLE} characters (cannot be "
                "redacted safely; store it alone with `secrets set --allow-short`)"
            )
        elif len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
            problems.append(f"line {number}: {name}: longer than {MAX_VALUE_BYTES} bytes")
        elif name in values:
            problems.append(f"line {number}: {name} is given twice")
        else:
            values[name] = value
    if problems:
        raise BlindkeyError("nothing stored: " + "; ".join(problems))
    if not values:
        raise BlindkeyError("nothing stored: no NAME=VALUE lines")
    return values


def cmd_secrets_import(paths: Paths, args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BlindkeyError(f"cannot read {args.file}: {exc}") from None
    values = parse_dotenv(text)
    settings = load_settings(paths.config_file)
    env = pick_env(settings, args.env)
    with opened(local_store(paths, settings)) as store:
        for name, value in values.items():
            store.set(env, name, value)
    names = sorted(values)
    record(paths, "secret_set", names)
    put_in_force(
        paths, settings, f"{len(names)} values are stored in {env}", [(env, n) for n in names]
    )
    say(f"stored {len(names)} secrets in {env}: {', '.join(names)}")
    return 0


@exit_for_refusal
def cmd_config_approve(paths: Paths, args: argparse.Namespace) -> int:
    result = accept(paths, "approve", None, args.by, args.code)
    record(
        paths,
        "reload",
        result.get("names") or [],
        result.get("before"),
        result.get("after"),
        result.get("approver"),
        via="approve",
    )
    put_in_force(paths, None, "config.toml is approved", config=True)
    widened = result.get("widened") or []
    say("config.toml approved" + (f": {'; '.join(widened)}" if widened else " (nothing widened)"))
    return 0
