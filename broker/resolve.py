"""The broker's `resolve` op: who the caller is and which values it may have for one
call; a value a slow store has not given yet is answered later, out of order by id."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from blindkey.broker.leases import settle_all
from blindkey.broker.peer import Client
from blindkey.broker.protocol import BrokerDenied, Message, encode
from blindkey.broker.rules import answer_fields
from blindkey.broker.state import BrokerAnswer, BrokerState


class Resolve:
    def __init__(
        self, state: BrokerState, spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        self.state = state
        self.spawn = spawn

    def __call__(self, request: Message, client: Client) -> Message | None:
        client.caches = True
        request_id = request.get("id")
        token = request.get("token")
        names = request.get("names")
        host = request.get("host")
        # Where the values would go; a client that does not say: what a bare host names.
        scheme, port = request.get("scheme", "https"), request.get("port", 443)
        method, path = request.get("method", ""), request.get("path")
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or not isinstance(host, str)
            or not (token is None or isinstance(token, str))
            or not isinstance(scheme, str)
            or not isinstance(port, int)
            or not isinstance(method, str)
            or not (path is None or isinstance(path, str))
        ):
            return {"id": request_id, "error": "bad_request", "message": "malformed resolve"}
        settle_all(self.state.rules.limiter, request.get("settle"))  # leased calls unspent
        answer = self.state.resolve(token, names, host, scheme, port, method, path)
        if answer.missing:
            target = (scheme, host, port, method, path)
            self.spawn(self._resolve_later(request_id, token, names, target, client))
            return None
        reply = self._resolved(request_id, answer)
        if request.get("lease") is True and answer.denied is None:
            lease = self.state.rules.lease(answer.agent, names, answer.rules)
            if lease is not None:
                reply["lease"] = lease
        return reply

    def _resolved(self, request_id: Any, answer: BrokerAnswer) -> Message:
        reply: Message = {
            "id": request_id,
            "agent": answer.agent,
            "env": answer.env,
            "generation": self.state.generation,
            "values": answer.values,
        }
        reply.update(answer_fields(answer.denied, answer.rules))
        return reply

    async def _resolve_later(
        self,
        request_id: Any,
        token: str | None,
        names: list[str],
        target: tuple[str, str, int, str, str | None],
        client: Client,
    ) -> None:
        state = self.state
        scheme, host, port, method, path = target
        try:
            first = state.resolve(token, names, host, scheme, port, method, path)
            await state.fetch(first.env, first.missing)
            answer = state.resolve(token, names, host, scheme, port, method, path)
            if answer.missing:
                state.unavailable()
            reply = self._resolved(request_id, answer)
        except BrokerDenied as exc:  # unavailable, or the agent was revoked meanwhile
            reply = {"id": request_id, "error": exc.code, "message": str(exc)}
        client.send(encode(reply))
