"""The handlers of `blindkey route add|list|remove`: routes live in config.toml as
[routes.NAME], and every change is in force in running proxies when the command returns
(the same edit-and-put-in-force path as the allowlist's)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from blindkey.cli.approvals import approver_code, exit_for_refusal
from blindkey.cli.call import _injections, proxy_address
from blindkey.config.arguments import Subcommands, action_group, json_flag
from blindkey.config.console import emit_json, say, table, warn
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.hosts import AllowEntry
from blindkey.config.loader import load_settings
from blindkey.config.model import AGENT_NAME, SECRET_NAME, Route, Settings
from blindkey.config.paths import Paths

if TYPE_CHECKING:
    from blindkey.proxy.request.parse import Target


def _route_from_args(args: argparse.Namespace) -> Route:
    from blindkey.proxy.errors import ProxyError
    from blindkey.proxy.request.routes import route_base, route_injection

    chosen = [
        (style, value)
        for style in ("bearer", "basic", "header", "query", "sigv4")
        if (value := getattr(args, style, None)) is not None
    ]
    if len(chosen) != 1:
        raise UsageError(
            "route add needs exactly one of --bearer S, --basic S, --header H=S, --query P=S, "
            "--sigv4 S"
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


def _add_route(
    name: str, route: Route, target: Target, entry_text: str, outcome: dict[str, str | None]
) -> Callable[[Any], None]:
    """The config.toml edit of `route add`: the route, and its host on the allowlist unless
    an entry covers it already (then named in `outcome`)."""
    import tomlkit

    from blindkey.config.edit import string_array, toml_table

    def change(document: Any) -> None:
        routes = document.get("routes")
        if routes is None:
            document["routes"] = tomlkit.table(is_super_table=True)
        elif name in routes:
            raise BlindkeyError(
                f"route {name} exists (to {routes[name].get('to')}); "
                f"`blindkey route remove {name}` first"
            )
        section = toml_table(document, "routes", name)
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

    return change


def _warn_unusable(
    paths: Paths, settings: Settings, route: Route, target: Target, entry_text: str
) -> None:
    """Saved all the same, but say why calls through the route would be refused."""
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


@exit_for_refusal
def cmd_route_add(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.broker.notify import put_in_force
    from blindkey.broker.policy_link import change_policy
    from blindkey.proxy.request.egress import entry_for
    from blindkey.proxy.request.routes import route_base

    if not AGENT_NAME.match(args.name):
        raise UsageError(
            f"{args.name!r} is not a route name (letters, digits, '_', '.', '-'; at most 64)"
        )
    route = _route_from_args(args)
    target = route_base(args.name, route.to)
    entry_text = entry_for(target)
    outcome: dict[str, str | None] = {"covered_by": None}
    change = _add_route(args.name, route, target, entry_text, outcome)
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
    _warn_unusable(paths, settings, route, target, entry_text)
    return 0


def _is_stored(paths: Paths, settings: Settings, name: str) -> bool:
    """Whether the active environment holds `name`; True when the store cannot be read here
    (a broker of its own user owns it): then only the proxy's answer can tell."""
    from blindkey.broker.secrets_ops import local_store, opened

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
    from blindkey.proxy.request.routes import ROUTE_PREFIX

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
    from blindkey.broker.notify import put_in_force
    from blindkey.broker.policy_link import change_policy

    def change(document: Any) -> None:
        routes = document.get("routes")
        if routes is None or args.name not in routes:
            raise BlindkeyError(f"no route named {args.name}; `blindkey route list` shows them")
        del routes[args.name]

    settings = change_policy(paths, change, "route_remove", [args.name], None, None)
    put_in_force(paths, settings, f"route {args.name} is removed", config=True)
    say(f"route {args.name} removed; the allowlist is unchanged (blindkey allowlist list)")
    return 0


def add_commands(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "route",
        help="base_url routes for SDKs: /r/NAME/... with a secret injected",
        description="OpenAI(base_url='http://127.0.0.1:8765/r/openai/v1', api_key=AGENT_TOKEN) "
        "works unchanged: the agent token goes where the SDK puts its key, and blindkey "
        "puts the real value there instead.",
    )
    p = actions.add_parser("add", help="add a route (its host joins the allowlist)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", required=True, metavar="URL", help="the API's base URL")
    _injections(p, many=False)
    p.add_argument("--sigv4", metavar="S", help="sign with the aws secret S (AWS SDKs)")
    approver_code(p)  # the route's host joins the allowlist: a widening
    p.set_defaults(handler=cmd_route_add)
    p = actions.add_parser("list", help="routes and what they inject")
    json_flag(p)
    p.set_defaults(handler=cmd_route_list)
    p = actions.add_parser("remove", help="remove a route")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_route_remove)
