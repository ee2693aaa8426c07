"""The command tree for agents that do not speak X-AS-*: route, call, env, exec, mcp.

Handlers are imported when chosen (see cli/main.py): routes and call in proxy/, env and
exec in broker/ (they release values), mcp in proxy/.
"""

from __future__ import annotations

import argparse

from blindkey.config.arguments import Subcommands, action_group, json_flag


def _injections(p: argparse.ArgumentParser, *, many: bool) -> None:
    """--bearer/--basic/--header/--query: one of them for a route, any number for a call."""
    options = {
        "--bearer": ("S", "Authorization: Bearer <value of S>"),
        "--basic": ("S", "Authorization: Basic (S holds user:pass)"),
        "--header": ("H=S", "header H carries the value of S"),
        "--query": ("P=S", "query parameter P carries the value of S"),
    }
    for flag, (metavar, text) in options.items():
        if many:
            p.add_argument(flag, metavar=metavar, action="append", default=[], help=text)
        else:
            p.add_argument(flag, metavar=metavar, help=text)


def _route(sub: Subcommands) -> None:
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
    from blindkey.cli.approvals_tree import approver_code

    approver_code(p)  # the route's host joins the allowlist: a widening
    p.set_defaults(handler="blindkey.cli.route:cmd_route_add")
    p = actions.add_parser("list", help="routes and what they inject")
    json_flag(p)
    p.set_defaults(handler="blindkey.cli.route:cmd_route_list")
    p = actions.add_parser("remove", help="remove a route")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler="blindkey.cli.route:cmd_route_remove")


def _call(sub: Subcommands) -> None:
    p = sub.add_parser(
        "call",
        help="one request through the running proxy, answer printed redacted",
        description="Exit 0 on a 2xx answer, 1 otherwise.",
    )
    p.add_argument("--url", required=True, metavar="URL")
    p.add_argument("--method", metavar="M", help="default GET, or POST with -d")
    _injections(p, many=True)
    p.add_argument(
        "--body-field",
        metavar="a.b=S",
        action="append",
        default=[],
        help="JSON body field a.b carries the value of S",
    )
    p.add_argument(
        "-H",
        dest="headers",
        metavar="'Name: value'",
        action="append",
        default=[],
        help="an extra request header (repeatable)",
    )
    p.add_argument("-d", dest="data", metavar="DATA", help="request body; @FILE reads a file")
    p.add_argument(
        "-i", dest="include", action="store_true", help="print the status line and headers first"
    )
    p.set_defaults(handler="blindkey.cli.call:cmd_call")


def add_integration_commands(sub: Subcommands) -> None:
    _route(sub)
    _call(sub)
    p = sub.add_parser(
        "env",
        help="run CMD with secrets as environment variables, its output redacted",
        description="Only secrets whose release includes env. CMD's stdout and stderr come "
        "back with every value redacted; blindkey exits with CMD's status.",
    )
    p.add_argument(
        "--secret",
        metavar="NAME",
        action="append",
        default=[],
        help="a secret to set (repeatable; default: every secret released to env)",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(handler="blindkey.broker.release_env:cmd_env")
    p = sub.add_parser(
        "exec",
        help="OpenClaw exec provider (protocol v1 on stdin/stdout)",
        description='Reads {"protocolVersion": 1, "provider": P, "ids": [...]} on stdin; only '
        "secrets whose release includes exec are answered.",
    )
    p.set_defaults(handler="blindkey.broker.release_exec:cmd_exec")
    actions = action_group(sub, "mcp", help="MCP server for agents (stdio)")
    p = actions.add_parser("serve", help="serve MCP on stdin/stdout")
    p.set_defaults(handler="blindkey.cli.mcp:cmd_mcp_serve")
    p = actions.add_parser("config", help="print the snippet for Claude Desktop, Cursor and others")
    p.set_defaults(handler="blindkey.cli.mcp:cmd_mcp_config")
