"""`blindkey mcp serve`: an MCP server on stdio for agents that speak MCP (Claude Desktop,
Cursor and the like), and `blindkey mcp config`, the snippet that registers it.

Three tools, none of which can read a value or change anything a human decides:
`list_secrets` (names, tier, hosts: from the broker, for the agent whose token is in
BLINDKEY_AGENT_TOKEN), `list_allowlist`, and `http_request`, which goes through the
running proxy like any agent's call (same checks, same record, answer redacted). There is
no tool to switch environment, approve, edit the allowlist or set a secret: a prompt-
injected agent finds nothing to ask for. Every tool call is an audit record (`mcp`),
written by the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from blindkey.audit.printable import printable
from blindkey.broker.protocol import BrokerDenied, BrokerUnavailable
from blindkey.broker.release import ReleaseLink
from blindkey.broker.release_exec import (
    TOKEN_VARIABLE,
    agent_token,
    broker_socket,
    denial_text,
)
from blindkey.cli.call import proxy_address, wire_headers
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import SECRET_NAME
from blindkey.config.paths import Paths
from blindkey.proxy.request.parse import HTTP_TOKEN, parse_target

if TYPE_CHECKING:  # the SDK is imported only by `mcp serve` itself
    from mcp.server.mcpserver import MCPServer

T = TypeVar("T")
MAX_ANSWER = 2**20  # the part of an answer handed to the model; the rest is cut, and said so
TIMEOUT = 330.0
_PLACES = ("bearer", "basic", "header", "query", "body", "form")
INSTRUCTIONS = (
    "blindkey calls APIs with secrets you never see. List what you may use with "
    "list_secrets and where with list_allowlist, then call http_request with "
    "inject={'bearer': 'SECRET_NAME'} (or 'header:Name', 'query:param', 'body:a.b', "
    "'form:field', 'basic'). Values appear in answers as [REDACTED:NAME]. A refusal "
    "(host_not_allowed, approval_required, ...) is for a human to lift, not for you."
)


def _broker(paths: Paths, tool: str, detail: dict[str, Any]) -> dict[str, Any]:
    try:
        with ReleaseLink(broker_socket(paths)) as link:
            return link.call("mcp", tool=tool, detail=detail, token=agent_token())
    except BrokerDenied as exc:
        raise BlindkeyError(denial_text(exc)) from None
    except BrokerUnavailable as exc:
        raise BlindkeyError(f"broker_unavailable: {exc}") from None


def list_secrets(paths: Paths) -> list[dict[str, Any]]:
    reply = _broker(paths, "list_secrets", {})
    return list(reply.get("secrets") or [])


def list_allowlist(paths: Paths) -> list[str]:
    _broker(paths, "list_allowlist", {})
    try:
        settings = load_settings(paths.config_file)
    except OSError as exc:
        raise BlindkeyError(f"cannot read the allowlist: {exc.strerror}") from exc
    return [entry.text for entry in settings.allowlist.entries]


def injection_headers(inject: dict[str, str]) -> dict[str, str]:
    """{"bearer": "NAME", "header:X-Api-Key": "NAME", ...} as X-AS-Inject-* headers."""
    headers = {}
    for place, secret in inject.items():
        style, _, key = place.partition(":")
        style = style.strip().lower()
        if (
            style not in _PLACES
            or (style in ("bearer", "basic")) != (key == "")
            or (key and not HTTP_TOKEN.match(key))
        ):
            raise BlindkeyError(
                f"inject key {printable(place[:64])!r}: use 'bearer', 'basic', 'header:Name', "
                "'query:param', 'body:a.b' or 'form:field'"
            )
        suffix = style.capitalize() + (f"-{key}" if key else "")
        headers[f"X-AS-Inject-{suffix}"] = secret
    return headers


def _checked(
    method: str, url: str, inject: dict[str, str], headers: dict[str, str]
) -> dict[str, str]:
    """The proxy headers for a tool call, or a refusal of the first thing that is wrong."""
    if not HTTP_TOKEN.match(method):
        raise BlindkeyError(f"method {printable(method[:16])!r} is not an HTTP method")
    if not url.isprintable():  # C1 controls and bidi overrides too, not only C0
        raise BlindkeyError("url must not contain control characters")
    parse_target(url)  # an absolute http(s) URL with no spaces or controls, or a refusal
    for secret in inject.values():
        if not SECRET_NAME.match(secret):
            raise BlindkeyError(f"inject: {printable(secret[:64])!r} is not a secret name")
    sent = {"X-AS-Target-URL": url, **injection_headers(inject)}
    for name, value in headers.items():
        if name.lower().startswith("x-as-"):
            raise BlindkeyError(f"header {name}: X-AS-* headers come from url and inject")
        if not HTTP_TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            raise BlindkeyError(f"header {printable(name[:64])!r}: not a header name and value")
        sent[name] = value
    return sent


def http_request(
    paths: Paths,
    method: str,
    url: str,
    inject: dict[str, str],
    headers: dict[str, str] | None = None,
    body: str = "",
) -> dict[str, Any]:
    # Everything is checked before anything is recorded: the broker's `mcp` record holds
    # the method, url and names, and a CR/LF or an escape in them would reach whoever
    # reads the log.
    sent = _checked(method, url, inject, headers or {})
    token = agent_token()
    if token is not None:
        sent["X-AS-Agent-Token"] = token
    _broker(
        paths,
        "http_request",
        {"method": method.upper(), "url": url, "secrets": list(inject.values())},
    )
    host, port = proxy_address(paths)
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        payload = body.encode("utf-8") if body else None
        connection.request(method.upper(), "/proxy", body=payload, headers=wire_headers(sent))
        response = connection.getresponse()
        data = response.read(MAX_ANSWER + 1)
        answer_headers = dict(response.getheaders())
        status = response.status
    except ConnectionRefusedError:
        raise BlindkeyError(
            f"no proxy answers on {host}:{port}; a human can start it with `blindkey proxy start`"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise BlindkeyError(f"the call to the proxy failed: {exc}") from exc
    finally:
        connection.close()
    return {
        "status": status,
        "headers": answer_headers,
        "body": data[:MAX_ANSWER].decode("utf-8", "replace"),
        "truncated": len(data) > MAX_ANSWER,
    }


async def _in_thread(work: Callable[..., T], *args: Any) -> T:
    """Run a blocking helper; a refusal reaches the model as the tool's error text."""
    from mcp.server.mcpserver.exceptions import ToolError

    try:
        return await asyncio.to_thread(work, *args)
    except BlindkeyError as exc:
        raise ToolError(str(exc)) from None


def build_server(paths: Paths) -> MCPServer[Any]:
    from mcp.server.mcpserver import MCPServer

    server: MCPServer[Any] = MCPServer("blindkey", instructions=INSTRUCTIONS)

    @server.tool(
        name="list_secrets",
        description="Secrets you may use: name, tier, hosts. Never their values.",
    )
    async def list_secrets_tool() -> list[dict[str, Any]]:
        return await _in_thread(list_secrets, paths)

    @server.tool(
        name="list_allowlist",
        description="Hosts blindkey may call (scheme, host, port as allowlisted).",
    )
    async def list_allowlist_tool() -> list[str]:
        return await _in_thread(list_allowlist, paths)

    @server.tool(
        name="http_request",
        description="An HTTP request through blindkey with secrets injected by name, e.g. "
        "inject={'bearer': 'GITHUB_TOKEN'}; keys 'bearer', 'basic', 'header:Name', "
        "'query:param', 'body:a.b', 'form:field'. The answer comes back redacted.",
    )
    async def http_request_tool(
        method: str,
        url: str,
        inject: dict[str, str],
        headers: dict[str, str] | None = None,
        # str, not str | None: the SDK would read a JSON text given for an Optional[str]
        # as the object it spells, and then refuse it as no string.
        body: str = "",
    ) -> dict[str, Any]:
        return await _in_thread(http_request, paths, method, url, inject, headers, body)

    return server


def cmd_mcp_serve(paths: Paths, args: argparse.Namespace) -> int:
    server = build_server(paths)
    server.run("stdio")
    return 0


def _command() -> list[str]:
    script = Path(sys.executable).parent / "blindkey"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "mcp", "serve"]
    return [sys.executable, "-m", "blindkey.cli", "mcp", "serve"]


def cmd_mcp_config(paths: Paths, args: argparse.Namespace) -> int:
    command, *rest = _command()
    env = {TOKEN_VARIABLE: "<the token `blindkey agent add NAME` printed>"}
    if os.environ.get("BLINDKEY_HOME"):
        env["BLINDKEY_HOME"] = os.environ["BLINDKEY_HOME"]
    snippet = {"mcpServers": {"blindkey": {"command": command, "args": rest, "env": env}}}
    sys.stdout.write(json.dumps(snippet, indent=2) + "\n")
    sys.stderr.write(
        "Add this to the client's MCP configuration (Claude Desktop: "
        "claude_desktop_config.json; Cursor: ~/.cursor/mcp.json), with the agent's token.\n"
    )
    return 0
