"""Values handed out to a command instead of the proxy: `blindkey env` and `blindkey exec`.

The broker decides and hands out, over its socket, so the CLI of an agent's user that
cannot read the vault (the hardened deployment) still works, and the decision is the
broker's alone: the agent (its token), the secret's `release` channels, its agents, its
tier. The broker also writes the audit record, before a value leaves: `exec` when it
answers, `env` once the command it ran reports its exit status (or its connection drops).

Ops: `release` {token, names (null: every secret released to the channel), channel,
argv} answers {agent, env, values, errors: {NAME: {error, message}}}; `released`
{exit_status} ends an `env` release on the same connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from blindkey.audit.events import append_event
from blindkey.broker.cache import MISSING
from blindkey.broker.link import Link
from blindkey.broker.protocol import BrokerDenied, Message, encode
from blindkey.broker.state import BrokerState
from blindkey.config.model import SECRET_NAME

log = logging.getLogger("blindkey.broker")
CHANNELS = ("env", "exec")
MCP_TOOLS = ("list_secrets", "list_allowlist", "http_request")
# All a user of [broker] release_uids may ask: never resolve (a proxy's), approvals, refresh.
RELEASE_OPS = frozenset({"release", "released", "mcp", "ping"})
MAX_NAMES = 256
Errors = dict[str, dict[str, str]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Peer(Protocol):
    """A connection to the broker, as the ops see it (the server's Peer)."""

    def send(self, frame: bytes) -> None: ...


@dataclass
class OpenRelease:
    """An `env` release whose command still runs: its record waits for the exit status."""

    fields: dict[str, Any]
    done: bool = field(default=False)


def released_names(state: BrokerState, agent: str, channel: str) -> list[str]:
    """Every secret whose policy releases it to `channel` for `agent`."""
    return sorted(
        name
        for name, policy in state.settings.secrets.items()
        if channel in policy.release and policy.allows_agent(agent)
    )


class Releaser:
    """The broker's `release` and `released` ops."""

    def __init__(self, state: BrokerState, spawn: Spawn) -> None:
        self.state = state
        self.spawn = spawn  # the server's: a named task it keeps and cancels at close
        self.open: dict[Peer, OpenRelease] = {}
        self._writing = asyncio.Lock()

    def release(self, request: Message, client: Peer) -> Message | None:
        request_id = request.get("id")
        channel, names, argv = request.get("channel"), request.get("names"), request.get("argv")
        token = request.get("token")
        if (
            channel not in CHANNELS
            or not (names is None or isinstance(names, list))
            or not (argv is None or isinstance(argv, list))
            or not (token is None or isinstance(token, str))
        ):
            return {"id": request_id, "error": "bad_request", "message": "malformed release"}
        if channel == "env" and client in self.open:
            return {"id": request_id, "error": "bad_request", "message": "one env per connection"}
        state = self.state
        if state.view is None:
            raise BrokerDenied(
                "broker_unavailable", state.last_error or "the broker has loaded nothing yet"
            )
        agent = state.authenticate(token)
        env = state.settings.active_env
        wanted = released_names(state, agent, channel) if names is None else names[:MAX_NAMES]
        self.spawn(
            self._answer(request_id, client, agent, env, channel, wanted, argv, names is None)
        )
        return None

    async def _answer(
        self,
        request_id: Any,
        client: Peer,
        agent: str,
        env: str,
        channel: str,
        names: list[Any],
        argv: list[Any] | None,
        every: bool,
    ) -> None:
        state = self.state
        view = state.view
        assert view is not None
        valid = [n for n in names if isinstance(n, str) and SECRET_NAME.match(n)]
        if any(view.lookup(env, n) is MISSING for n in valid):
            await state.fetch(env, valid)
        values: dict[str, str] = {}
        errors: Errors = {}
        for name in names:
            key = name if isinstance(name, str) else repr(name)
            try:
                if key not in valid:
                    raise BrokerDenied("bad_request", f"{key[:130]!r} is not a secret name")
                value = view.lookup(env, key)
                if value is MISSING:
                    raise BrokerDenied("broker_unavailable", "the secret store is not answering")
                if value is None:
                    raise BrokerDenied(
                        "unknown_secret", f"no secret named {key} in environment {env}"
                    )
                denied = state.check_release(agent, env, key, channel)
                if denied is not None:
                    raise denied
                assert isinstance(value, str)
                values[key] = value
            except BrokerDenied as exc:
                if not every or exc.code != "unknown_secret":
                    errors[key] = {"error": exc.code, "message": str(exc)}
        fields: dict[str, Any] = {
            "agent": agent,
            "env": env,
            "secrets": sorted(values),
            "refused": sorted(errors),
            "decision": "allowed" if values or not errors else "blocked",
        }
        reply: Message = {"id": request_id, "agent": agent, "env": env}
        if channel == "env":
            fields["argv"] = [str(a) for a in argv or []]
            fields["exit_status"] = None
            self.open[client] = OpenRelease(fields)
        else:
            try:
                await self._append("exec", fields)
            except Exception as exc:  # any failure to record withholds the values
                log.error("exec record not written: %s", exc)
                values, errors = {}, {n: _unaudited() for n in names if isinstance(n, str)}
        client.send(encode({**reply, "values": values, "errors": errors}))

    def mcp(self, request: Message, client: Peer) -> Message | None:
        """A tool call of `blindkey mcp serve`: recorded; `list_secrets` also gets the names
        the agent may use with their tier and hosts (never a value)."""
        tool, detail, token = request.get("tool"), request.get("detail"), request.get("token")
        if (
            tool not in MCP_TOOLS
            or not isinstance(detail, dict)
            or not (token is None or isinstance(token, str))
        ):
            return {"id": request.get("id"), "error": "bad_request", "message": "malformed mcp"}
        state = self.state
        if state.view is None:
            raise BrokerDenied(
                "broker_unavailable", state.last_error or "the broker has loaded nothing yet"
            )
        agent = state.authenticate(token)
        env = state.settings.active_env
        reply: Message = {"id": request.get("id"), "agent": agent, "env": env}
        if tool == "list_secrets":
            reply["secrets"] = self._inventory(agent, env)
        fields = {"agent": agent, "env": env, "tool": tool, **_plain(detail)}
        self.spawn(self._record_then_send(client, "mcp", fields, reply))
        return None

    def _inventory(self, agent: str, env: str) -> list[dict[str, Any]]:
        view = self.state.view
        names = set(view.snapshot(env)) if view is not None else set()
        listed = []
        for name in sorted(names):
            policy = self.state.settings.policy(name)
            if policy.allows_agent(agent):
                listed.append(
                    {
                        "name": name,
                        "tier": policy.tier,
                        "hosts": [str(p) for p in policy.hosts],
                        "release": list(policy.release),
                    }
                )
        return listed

    async def _record_then_send(
        self, client: Peer, event: str, fields: dict[str, Any], reply: Message
    ) -> None:
        try:
            await self._append(event, fields)
        except Exception as exc:
            log.error("%s record not written: %s", event, exc)
            reply = {"id": reply["id"], **_unaudited()}
        client.send(encode(reply))

    async def _append(self, event: str, fields: dict[str, Any]) -> None:
        # One at a time, off the event loop: the proxy's resolves do not wait for an fsync.
        async with self._writing:
            await asyncio.to_thread(append_event, self.state.paths.audit_dir, event, fields)

    def released(self, request: Message, client: Peer) -> Message | None:
        status = request.get("exit_status")
        record = self.open.get(client)
        if record is None:
            return {"id": request.get("id"), "error": "bad_request", "message": "nothing released"}
        record.fields["exit_status"] = status if isinstance(status, int) else None
        self.spawn(self._close(client, request.get("id")))
        return None

    def client_lost(self, client: Peer) -> None:
        """A command that never reported its end (killed, crashed): recorded without one."""
        if client in self.open:
            self.spawn(self._close(client, None))

    async def _close(self, client: Peer, request_id: Any) -> None:
        record = self.open.pop(client, None)
        if record is None or record.done:
            return
        record.done = True
        try:
            await self._append("env", record.fields)
        except Exception as exc:  # the values are out already: the log says so
            log.error("env record not written: %s", exc)
        if request_id is not None:
            client.send(encode({"id": request_id, "recorded": True}))


def _plain(detail: dict[Any, Any]) -> dict[str, Any]:
    """What an mcp record may carry of a tool call: short strings and names, nothing else."""
    kept: dict[str, Any] = {}
    for key in ("method", "url", "host", "status"):
        value = detail.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            kept[key] = value if isinstance(value, int) else value[:2048]
    secrets = detail.get("secrets")
    if isinstance(secrets, list):
        kept["secrets"] = sorted(
            {s for s in secrets if isinstance(s, str) and SECRET_NAME.match(s)}
        )
    return kept


def _unaudited() -> dict[str, str]:
    return {
        "error": "audit_unavailable",
        "message": "the audit cannot be written: nothing is released until it can",
    }


# --- the CLI's side --------------------------------------------------------------------


@dataclass
class Released:
    agent: str
    env: str
    values: dict[str, str]
    errors: Errors


def release(
    link: Link, token: str | None, names: list[str] | None, channel: str, argv: list[str] | None
) -> Released:
    """The values the broker releases to `channel` (its refusal of the whole: BrokerDenied)."""
    reply = link.call("release", token=token, names=names, channel=channel, argv=argv)
    return Released(
        agent=str(reply["agent"]),
        env=str(reply["env"]),
        values=dict(reply.get("values") or {}),
        errors=dict(reply.get("errors") or {}),
    )


def released(link: Link, exit_status: int | None) -> None:
    """Ends an `env` release on the same link: the broker writes its record now."""
    link.call("released", exit_status=exit_status)
