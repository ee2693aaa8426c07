"""`blindkey ca path` and `blindkey secrets placeholder NAME`: what a program needs to go
through proxy mode by hand (`blindkey run` sets both up for a command)."""

from __future__ import annotations

import argparse
from typing import Any

from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import emit_json, say
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths


def add_commands(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "ca",
        help="proxy mode's local CA",
        description="blindkey answers TLS for hosts a secret is bound to with certificates "
        "of its own CA (made by `init`; its key is the proxy user's only). `blindkey run` "
        "makes the commands it runs trust it.",
    )
    p = actions.add_parser("path", help="the CA certificate (PEM) that `run` trusts")
    p.set_defaults(handler=cmd_ca_path)


def add_placeholder_command(actions: Any) -> None:
    p = actions.add_parser(
        "placeholder",
        help="the placeholder a program holds for NAME in proxy mode",
        description="bk_ then 32 base32 characters (after [secrets.NAME] placeholder_prefix "
        "when set): holds nothing of the value, stays the same until the value changes, and "
        "is replaced by the value only on the way to the hosts NAME is bound to.",
    )
    p.add_argument("name", metavar="NAME")
    json_flag(p)
    p.set_defaults(handler=cmd_secrets_placeholder)


def cmd_ca_path(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.proxy.tls.ca import ensure_ca

    ensure_ca(paths)
    say(str(paths.ca_cert))
    return 0


def _from_the_broker(paths: Paths, env: str) -> dict[str, str] | None:
    from blindkey.broker import link

    try:
        reply = link.ask(paths, "placeholders", env=env)
    except link.NotRunning:
        return None
    if reply.get("error"):
        raise BlindkeyError(f"the broker gave no placeholders: {reply.get('message')}")
    return dict(reply.get("placeholders") or {})


def cmd_secrets_placeholder(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.backends import open_backend
    from blindkey.broker.placeholders import ensure_key, placeholder

    settings = load_settings(paths.config_file)
    env = settings.active_env
    found = _from_the_broker(paths, env)
    if found is None:  # no broker runs: worked out here, from the store and the key
        backend = open_backend(paths, settings)
        try:
            value = backend.get(env, args.name)
        finally:
            backend.close()
        if value is not None:
            prefix = settings.policy(args.name).placeholder_prefix
            found = {args.name: placeholder(ensure_key(paths), env, args.name, value, prefix)}
    if not found or args.name not in found:
        raise BlindkeyError(f"no secret {args.name} in {env}; see `blindkey secrets list`")
    if args.json:
        emit_json({"secret": args.name, "env": env, "placeholder": found[args.name]})
    else:
        say(found[args.name])
    return 0
