"""The handlers of `blindkey route add|list|remove`: routes live in config.toml as
[routes.NAME], and every change is in force in running proxies when the command returns
(the same edit-and-put-in-force path as the allowlist's)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import urlsplit

import tomlkit

from blindkey.broker.approvals_link import exit_for_refusal
from blindkey.broker.notify import put_in_force
from blindkey.broker.policy_link import change_policy
from blindkey.cli.call import proxy_address
from blindkey.cli.secrets import local_store, opened
from blindkey.config.console import emit_json, say, table, warn
from blindkey.config.edit import string_array, toml_table
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.hosts import AllowEntry
from blindkey.config.loader import load_settings
from blindkey.config.model import AGENT_NAME, SECRET_NAME, Route, Settings
from blindkey.config.paths import Paths
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.egress import entry_for
from blindkey.proxy.request.routes import ROUTE_PREFIX, route_base, route_injection


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


@exit_for_refusal
def cmd_route_add(paths: Paths, args: argparse.Namespace) -> int:
    if not AGENT_NAME.match(args.name):
        raise UsageError(
            f"{args.name!r} is not a route name (letters, digits, '_', '.', '-'; at most 64)"
        )
    route = _route_from_args(args)
    target = route_base(args.name, route.to)
    entry_text = entry_for(target)
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

    settings = change_policy(paths, change, "route_add", [args.name], args.by, args.code)
    put_in_force(paths, settings, f"route {args.name} is saved", config=True)
    say(
        f"route {args.name}: {_base_url(paths, args.name)}/... -> {route.to}/... "
        f"({_describe(route)})"
    )
    sdk = sdk_base_url(_base_url(paths, args.name), route)
    say(f"SDK base URL: {sdk} (api_key: an agent token; `blindkey agent add NAME`)")
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
            f"`blindkey secrets policy {route.secret} --add-host {entry_text}`"
        )
    if "proxy" not in policy.release:
        warn(f"secret {route.secret} is not released to the proxy: calls will be refused")
    if not _is_stored(paths, settings, route.secret):
        warn(
            f"secret {route.secret} is not set in the {settings.active_env} environment: calls "
            f"will be refused (unknown_secret) until `blindkey secrets set {route.secret}`"
        )
    return 0


def _is_stored(paths: Paths, settings: Settings, name: str) -> bool:
    """Whether the active environment holds `name`; True when the store cannot be read here
    (a broker of its own user owns it): then only the proxy's answer can tell."""
    try:
        with opened(local_store(paths, settings)) as store:
            return name in store.names(settings.active_env)
    except (BlindkeyError, OSError):
        return True


def _describe(route: Route) -> str:
    if route.style == "header":
        return f"header {route.param}: {route.secret}"
    if route.style == "query":
        return f"query {route.param}={route.secret}"
    return f"{route.style} {route.secret}"


# The path each vendor's SDK puts after its default base URL: `OpenAI(base_url=...)` expects
# ".../v1", Anthropic's client adds "/v1/messages" itself. A route whose `to` already carries
# a path is used as it is.
_SDK_PATHS = {
    "api.openai.com": "/v1",
    "api.mistral.ai": "/v1",
    "api.together.xyz": "/v1",
    "api.groq.com": "/openai/v1",
    "openrouter.ai": "/api/v1",
}


def _base_url(paths: Paths, name: str) -> str:
    """The route's root on the proxy that runs (its status file), else the configured one."""
    host, port = proxy_address(paths)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}{ROUTE_PREFIX}{name}"


def sdk_base_url(base: str, route: Route) -> str:
    """What to give an SDK as `base_url` so its own paths land on the vendor's API."""
    target = urlsplit(route.to)
    if target.path.strip("/"):
        return base
    return base + _SDK_PATHS.get((target.hostname or "").lower(), "")


def cmd_route_list(paths: Paths, args: argparse.Namespace) -> int:
    settings = load_settings(paths.config_file)
    rows = [
        {
            "route": name,
            "to": route.to,
            "inject": route.style,
            "secret": route.secret,
            "name": route.param,
            "base_url": _base_url(paths, name),
            "sdk_base_url": sdk_base_url(_base_url(paths, name), route),
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
                [name, r["sdk_base_url"], route.to, _describe(route)]
                for (name, route), r in zip(sorted(settings.routes.items()), rows, strict=True)
            ],
            ["ROUTE", "SDK BASE URL", "TO", "INJECTS"],
        )
    return 0


@exit_for_refusal
def cmd_route_remove(paths: Paths, args: argparse.Namespace) -> int:
    def change(document: Any) -> None:
        routes = document.get("routes")
        if routes is None or args.name not in routes:
            raise BlindkeyError(f"no route named {args.name}; `blindkey route list` shows them")
        del routes[args.name]

    settings = change_policy(paths, change, "route_remove", [args.name], None, None)
    put_in_force(paths, settings, f"route {args.name} is removed", config=True)
    say(f"route {args.name} removed; the allowlist is unchanged (blindkey allowlist list)")
    return 0
