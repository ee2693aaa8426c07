"""The egress policy: which scheme/host/port may be called, and which addresses dialled.

Hostnames are resolved by `VettingResolver`, which hands the upstream client
(proxy/upstream/) only addresses that passed `address_allowed`, so the address checked is
the address connected to.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from blindkey.config.addresses import is_public as is_public  # tests import it here
from blindkey.config.hosts import DEFAULT_PORTS, AllowEntry, IPAddress, ip_literal
from blindkey.config.model import AllowlistSettings, IPNetwork
from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.parse import Target
from blindkey.proxy.upstream.connection import UpstreamConnection
from blindkey.proxy.upstream.errors import BlockedAddressError


def entry_for(target: Target) -> str:
    """The allowlist entry that permits exactly `target`'s scheme, host and port."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    if target.port != DEFAULT_PORTS[target.scheme]:
        host = f"{host}:{target.port}"
    return host if target.scheme == "https" else f"http://{host}"


_Key = tuple[str, int, str]  # scheme, port, host (or a wildcard's domain)


class AllowIndex:
    """The allowlist as two tables, so a lookup costs one probe per label of the host, not
    one comparison per entry: 10,000 entries cost what 10 do.

    Finds what a scan in order would: the first entry (in file order) that matches.
    """

    def __init__(self, entries: tuple[AllowEntry, ...]) -> None:
        self._exact: dict[_Key, tuple[int, AllowEntry]] = {}
        self._domains: dict[_Key, tuple[int, AllowEntry]] = {}
        for order, entry in enumerate(entries):
            table = self._domains if entry.pattern.wildcard else self._exact
            table.setdefault((entry.scheme, entry.port, entry.pattern.host), (order, entry))

    def find(self, scheme: str, host: str, port: int) -> AllowEntry | None:
        best = self._exact.get((scheme, port, host))
        if self._domains:
            # `*.example.com` admits every name that ends in ".example.com".
            rest = host
            while (dot := rest.find(".")) >= 0:
                rest = rest[dot + 1 :]
                found = self._domains.get((scheme, port, rest))
                if found is not None and (best is None or found[0] < best[0]):
                    best = found
        return None if best is None else best[1]


class EgressPolicy:
    def __init__(self, settings: AllowlistSettings, own_port: int | None = None) -> None:
        self.own_port = own_port
        self.update(settings)

    def update(self, settings: AllowlistSettings) -> None:
        """Take a reloaded allowlist (the index and the entries change together)."""
        self.entries = settings.entries
        self.index = AllowIndex(settings.entries)
        self.private_ranges: tuple[IPNetwork, ...] = settings.private_ranges

    def check(self, target: Target) -> AllowEntry:
        entry = self.index.find(target.scheme, target.host, target.port)
        if entry is None:
            raise ProxyError(
                "host_not_allowed",
                f"{target.scheme}://{target.host_header} is not on the allowlist; a human can "
                f"add it with `blindkey allowlist add {entry_for(target)}`",
            )
        literal = ip_literal(target.host)
        if literal is not None and self._is_self(literal, target.port):
            raise ProxyError("blocked_address", "the proxy will not call itself")
        return entry

    def _is_self(self, address: IPAddress, port: int) -> bool:
        return port == self.own_port and (address.is_loopback or address.is_unspecified)

    def address_allowed(self, address: IPAddress) -> bool:
        if any(
            address in network
            for network in self.private_ranges
            if network.version == address.version
        ):
            return True
        return is_public(address)


def dialled(connection: UpstreamConnection) -> str | None:
    """The address a call's connection dialled, as `ip:port` (`[ip]:port` for IPv6): the
    record's `peer`, the address the egress policy vetted."""
    if connection.transport is None:
        return None
    if connection.peer is not None:  # a pooled connection dialled it for an earlier call
        return connection.peer
    peer = connection.transport.get_extra_info("peername")
    if not isinstance(peer, tuple) or len(peer) < 2:
        return None
    host = str(peer[0])
    connection.peer = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return connection.peer


class VettingResolver(AbstractResolver):
    """Resolve with the system resolver, then drop every address the policy refuses."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [
            r for r in results if self.policy.address_allowed(ipaddress.ip_address(r["host"]))
        ]
        if not allowed:
            raise BlockedAddressError(host, (r["host"] for r in results))
        return allowed

    async def close(self) -> None:
        await self._inner.close()
