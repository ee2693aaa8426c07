"""The handlers of `blindkey route add|list|remove`: routes live in config.toml as
[routes.NAME], and every change is in force in running proxies when the command returns
(the same edit-and-put-in-force path as the allowlist's)."""

from __future__ import annotations

import argparse
from typing import Any

import tomlkit

from blindkey.broker.notify import put_in_force
from blindkey.config.console import emit_json, say, table, warn
from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.hosts import DEFAULT_PORTS, AllowEntry
from blindkey.config.loader import load_settings
from blindkey.config.model import AGENT_NAME, SECRET_NAME, Route, Settings
from blindkey.config.paths import Paths
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.parse import Target
from blindkey.proxy.routes import ROUTE_PREFIX, route_base, route_injection


def _route_from_args(args: argparse.Namespace) -> Route:
    chosen = [
        (style, value)
        for style in ("bearer", "basic", "header", "query")
        if (value := getattr(args, style)) is not None
    ]
    if len(chosen) != 1:
        raise UsageError(
            "route add needs exactly one of --bearer S, --basic S, --header H=S, --query P=S"
        )
    ((style, value),) = chosen
    param = ""
    secret = value
    if style in ("header", "query"):
        param, sep, secret = value.partition("=")
        if not sep or not param:
            flag, metavar = ("--header", "H=S") if style == "header" else ("--query", "P=S")
            raise UsageError(f"{flag} takes {metavar}: the {style} name, '=', the secret name")
    if not SECRET_NAME.match(secret):
        raise UsageError(
            f"{secret!r} is not a secret name (a letter or '_', then letters, digits, "
            "'_', '.', '-'; at most 128)"
        )
    route = Route(to=args.to.strip().rstrip("/"), style=style, secret=secret, param=param)
    try:
        route_base(args.name, route.to)
        route_injection(args.name, route)
    except ProxyError as exc:
        raise UsageError(exc.message) from None
    return route


def allow_entry_text(target: Target) -> str:
    """The allowlist entry that permits exactly the route's scheme, host and port."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != DEFAULT_PORTS[target.scheme]:
        host = f"{host}:{target.port}"
    return host if target.scheme == "https" else f"http://{host}"


def cmd_route_add(paths: Paths, args: argparse.Namespace) -> int:
    if not AGENT_NAME.match(args.name):
        raise UsageError(
            f"{args.name!r} is not a route name (letters, digits, '_', '.', '-'; at most 64)"
        )
    route = _route_from_args(args)
    target = route_base(args.name, route.to)
    entry_text = allow_entry_text(target)
    outcome: dict[str, str | None] = {"covered_by": None}

    def change(document: Any) -> None:
        routes = document.get("routes")
        if routes is None:
            document["routes"] = tomlkit.table(is_super_table=True)
        elif args.name in routes:
            raise BlindkeyError(
                f"route {args.name} exists (to {routes[args.name].get('to')}); "
                f"`blindkey route remove {args.name}` first"
            )
        section = toml_table(document, "routes", args.name)
        section["to"] = route.to
        section["inject"] = route.style
        section["secret"] = route.secret
        if route.param:
            section["name"] = route.param
        allowlist = toml_table(document, "allowlist")
        hosts = [str(h) for h in allowlist.get("hosts", [])]
        for text in hosts:
            if AllowEntry.parse(text).matches(target.scheme, target.host, target.port):
                outcome["covered_by"] = text
                return
        allowlist["hosts"] = string_array([*hosts, entry_text])

    settings = edit_config(paths.config_file, paths.lock_file, change)
    put_in_force(paths, settings, f"route {args.name} is saved", config=True)
    say(
        f"route {args.name}: {_base_url(settings, args.name)}/... -> {route.to}/... "
        f"({_describe(route)})"
    )
    if outcome["covered_by"] is None:
        say(f"allowlisted: {entry_text}")
    else:
        say(f"already allowlisted by {outcome['covered_by']}")
    policy = settings.policy(route.secret)
    if not policy.allows_host(target.scheme, target.host, target.port):
        hosts = ", ".join(str(p) for p in policy.hosts)
        warn(
            f"secret {route.secret} is bound to {hosts}, not {entry_text}: calls through "
            f"this route will be refused (secret_denied) until it is bound with "
            f"`blindkey secrets set {route.secret} --host {entry_text}`"
        )
    if "proxy" not in policy.release:
        warn(f"secret {route.secret} is not released to the proxy: calls will be refused")
    return 0


def _describe(route: Route) -> str:
    if route.style == "header":
        return f"header {route.param}: {route.secret}"
    if route.style == "query":
        return f"query {route.param}={route.secret}"
    return f"{route.style} {route.secret}"


def _base_url(settings: Settings, name: str) -> str:
    host = settings.proxy.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.proxy.port}{ROUTE_PREFIX}{name}"


def cmd_route_list(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    rows = [
        {
            "route": name,
            "to": route.to,
            "inject": route.style,
            "secret": route.secret,
            "name": route.param,
            "base_url": _base_url(settings, name),
        }
        for name, route in sorted(settings.routes.items())
    ]
    if args.json:
        emit_json(rows)
    elif not rows:
        say(
            "no routes; add one with: blindkey route add openai --to https://api.openai.com "
            "--bearer OPENAI_API_KEY"
        )
    else:
        table(
            [
                [name, r["base_url"], route.to, _describe(route)]
                for (name, route), r in zip(sorted(settings.routes.items()), rows, strict=True)
            ],
            ["ROUTE", "BASE URL", "TO", "INJECTS"],
        )
    return 0


def cmd_route_remove(paths: Paths, args: argparse.Namespace) -> int:
    def change(document: Any) -> None:
        routes = document.get("routes")
        if routes is None or args.name not in routes:
            raise BlindkeyError(f"no route named {args.name}; `blindkey route list` shows them")
        del routes[args.name]

    settings = edit_config(paths.config_file, paths.lock_file, change)
    put_in_force(paths, settings, f"route {args.name} is removed", config=True)
    say(f"route {args.name} removed; the allowlist is unchanged (blindkey allowlist list)")
    return 0
