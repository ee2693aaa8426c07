"""`blindkey environment list|switch|copy`: values are per environment, the proxy serves
the active one, and production is only entered on purpose."""

from __future__ import annotations

import argparse
from typing import Any

from blindkey.broker.approvals_link import call, exit_for_refusal, with_code
from blindkey.broker.notify import put_in_force
from blindkey.broker.policy_link import change_policy
from blindkey.cli.secrets import (
    confirm,
    inventory,
    local_store,
    opened,
    pick_env,
)
from blindkey.config.console import emit_json, say, table
from blindkey.config.edit import toml_table
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.config.stores import PRODUCTION


def cmd_environment_list(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    with opened(local_store(paths, settings)) as store:
        held = inventory(store, settings)
    rows = [
        {"name": env, "active": env == settings.active_env, "secrets": len(held[env])}
        for env in settings.environments
    ]
    if args.json:
        emit_json(rows)
    else:
        table(
            [["*" if r["active"] else "", r["name"], str(r["secrets"])] for r in rows],
            ["", "ENVIRONMENT", "SECRETS"],
        )
    return 0


@exit_for_refusal
def cmd_environment_switch(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    env = pick_env(settings, args.name)
    if env == settings.active_env:
        say(f"{env} is already the active environment")
        return 0
    if env == PRODUCTION:
        confirm(f"switch the active environment to {PRODUCTION}", args.yes)

    def change(document: Any) -> None:
        toml_table(document, "environments")["active"] = env

    settings = change_policy(paths, change, "environment_switch", [env], None, None)
    put_in_force(paths, settings, f"{env} is saved as the active environment", config=True)
    say(f"active environment: {env} (a running proxy uses it for the next request)")
    return 0


@exit_for_refusal
def cmd_environment_copy(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    source, target = pick_env(settings, args.source), pick_env(settings, args.target)
    if source == target:
        raise BlindkeyError(f"copying {source} onto itself changes nothing")
    # A grant covers a secret in an environment, whatever its value: copied values would
    # ride on grants given for others, and production's are the live ones.
    with_code(
        args.code,
        f"Code of approver {args.by or 'default'} (consent to copying {source} into {target})",
        lambda code: call(paths, "copy_env", source=source, target=target, by=args.by,
                          code=code),
        required=False,
    )  # fmt: skip
    with opened(local_store(paths, settings)) as store:
        values = store.values(source)
        if not values:
            raise BlindkeyError(f"{source} holds no secrets; nothing to copy")
        existing = store.names(target)
        if target == PRODUCTION:
            confirm(f"copy {len(values)} values from {source} into {PRODUCTION}", args.yes)
        for name, value in values.items():
            store.set(target, name, value)
    put_in_force(
        paths, settings, f"{source} is copied to {target}", [(target, name) for name in values]
    )
    replaced = len(set(values) & existing)
    say(
        f"copied {len(values)} secrets from {source} to {target} "
        f"({replaced} replaced, {len(values) - replaced} new)"
    )
    return 0
