"""The HTTP client session of the broker's token calls (credentials/http.py), in a module of
its own: aiohttp's client costs a quarter of a second to import, and only a broker that
computes a credential (an OAuth2 refresh, a GitHub App token, an AWS role) makes such a
call, so the broker imports this on its first one and starts without it."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from pathlib import Path

import aiohttp
from aiohttp import ClientError as ClientError
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from blindkey.broker.protocol import BrokerDenied
from blindkey.config.addresses import is_public
from blindkey.config.model import Settings

MAX_TOKEN_TIMEOUT = 30.0


class _Vetting(AbstractResolver):
    def __init__(self, settings: Settings) -> None:
        self.ranges = settings.allowlist.private_ranges
        self._inner = DefaultResolver()

    def _allowed(self, text: str) -> bool:
        address = ipaddress.ip_address(text)
        in_range = any(address in n for n in self.ranges if n.version == address.version)
        return in_range or is_public(address)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._allowed(r["host"])]
        if not allowed:
            raise BrokerDenied("blocked_address", f"{host} resolves to an address not allowed")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def token_session(settings: Settings) -> aiohttp.ClientSession:
    """A session that dials only vetted addresses, verifies certificates (with the
    configured extra CA) and never goes through an HTTP(S)_PROXY."""
    context = ssl.create_default_context()
    if settings.proxy.ca_file:
        context.load_verify_locations(str(Path(settings.proxy.ca_file).expanduser()))
    timeout = min(settings.proxy.upstream_timeout, MAX_TOKEN_TIMEOUT)
    connector = aiohttp.TCPConnector(resolver=_Vetting(settings), ssl=context)
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # no HTTP(S)_PROXY: the material goes to the endpoint only
        timeout=aiohttp.ClientTimeout(total=timeout),
    )
