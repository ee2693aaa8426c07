"""The broker's own calls to token endpoints, under the egress rules of any proxied call:
the target must be on the allowlist, a hostname must resolve to an allowed address (the
address checked is the address dialled), and nothing waits longer than the timeout."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from blindkey.broker.credentials.provider import Secret
from blindkey.broker.protocol import BrokerDenied
from blindkey.config.hosts import DEFAULT_PORTS, entry_for, origin
from blindkey.config.model import Settings

MAX_ANSWER = 256 * 1024
# An OAuth2 error code is a short token; anything else the server says could echo material.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
Audit = Callable[[Mapping[str, Any]], Awaitable[None]]


class TokenClient:
    """POSTs to a token endpoint for one secret; every answer (or none) is an audit record."""

    def __init__(self, settings: Callable[[], Settings], audit: Audit) -> None:
        self.settings = settings
        self.audit = audit

    def _checked(self, secret: Secret, url: str) -> tuple[str, str, int]:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower().rstrip(".")
        if scheme not in DEFAULT_PORTS or not host:
            raise BrokerDenied(
                "bad_request", f"secret {secret.name}: {url!r} is not an http(s) URL"
            )
        port = parts.port or DEFAULT_PORTS[scheme]
        if not any(e.matches(scheme, host, port) for e in self.settings().allowlist.entries):
            raise BrokerDenied(
                "host_not_allowed",
                f"the token endpoint of {secret.name}, {origin(scheme, host, port)}, is not on "
                f"the allowlist; a human can add it with `blindkey allowlist add "
                f"{entry_for(scheme, host, port)}`",
            )
        return scheme, host, port

    async def post(
        self,
        secret: Secret,
        url: str,
        headers: Mapping[str, str],
        *,
        form: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The endpoint's JSON answer, or BrokerDenied saying what went wrong."""
        where, status, body = await self.exchange(secret, url, headers, data=form)
        return _answer(where, status, body)

    async def exchange(
        self,
        secret: Secret,
        url: str,
        headers: Mapping[str, str],
        *,
        data: Mapping[str, str] | bytes | None = None,
    ) -> tuple[str, int, bytes]:
        """(who answered, for messages; the status; the body, at most MAX_ANSWER bytes), or
        BrokerDenied when no answer came."""
        _, host, _ = self._checked(secret, url)
        settings = self.settings()
        where = f"token endpoint {host} of {secret.name}"
        # Here, not at the top: the broker starts without aiohttp's client (session.py).
        from blindkey.broker.credentials.session import ClientError, token_session

        try:
            async with (
                token_session(settings) as session,
                session.post(
                    url, data=data, headers=dict(headers), allow_redirects=False
                ) as response,
            ):
                status = response.status
                body = await response.content.read(MAX_ANSWER)
        except TimeoutError:
            await self._record(secret, host, None, "timeout")
            raise BrokerDenied("upstream_timeout", f"{where} did not answer in time") from None
        except BrokerDenied as exc:
            await self._record(secret, host, None, exc.code)
            raise
        except (ClientError, OSError) as exc:
            await self._record(secret, host, None, "unreachable")
            raise BrokerDenied(
                "upstream_error", f"{where} cannot be reached ({type(exc).__name__})"
            ) from None
        await self._record(secret, host, status, None)
        return where, status, body

    async def _record(
        self, secret: Secret, host: str, status: int | None, error: str | None
    ) -> None:
        fields = {"secret": secret.name, "env": secret.env, "host": host, "status": status}
        if error is not None:
            fields["error"] = error
        await self.audit(fields)


def _answer(where: str, status: int, body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not 200 <= status < 300:
        code = answer.get("error") if isinstance(answer, dict) else None
        said = f" {code}" if isinstance(code, str) and _ERROR_CODE.match(code) else ""
        raise BrokerDenied("upstream_error", f"{where} answered {status}{said}")
    if not isinstance(answer, dict):
        raise BrokerDenied("upstream_error", f"{where} answered {status} with no JSON object")
    return answer
