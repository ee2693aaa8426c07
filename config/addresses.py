"""Which addresses a call may reach: public ones (what `private_ranges` adds is the caller's
to apply). Shared by the proxy and by the broker, which calls token endpoints itself."""

from __future__ import annotations

import ipaddress

from blindkey.config.hosts import IPAddress

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "198.18.0.0/15",
        "255.255.255.255/32",
        "fd00:ec2::/32",
    )
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries: mapped, NAT64, 6to4 or Teredo."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 form that carries an IPv4 address is judged by the address it carries.
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    if not address.is_global or address.is_multicast or address.is_reserved:
        return False
    return not any(
        address in network for network in _EXTRA_BLOCKED if network.version == address.version
    )


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address: only processes of this machine can reach it."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
