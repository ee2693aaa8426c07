"""An intercepted tunnel's session: what every request inside it is known by."""

from __future__ import annotations

from dataclasses import dataclass, field

from blindkey.config.model import Settings


@dataclass
class Session:
    """An intercepted tunnel: what every request inside it is known by."""

    host: str
    port: int
    token: str
    agent: str
    env: str
    placeholders: dict[str, str] = field(default_factory=dict)  # placeholder -> secret
    scheme: str = "https"  # "http": one absolute-form request (HTTP_PROXY), no tunnel


def bound_secrets(
    settings: Settings, agent: str, host: str, port: int, scheme: str = "https"
) -> list[str]:
    """The secrets this agent may use that are bound to host:port: TLS to it is answered by
    blindkey. A secret bound to no host binds to nothing here (its placeholder goes nowhere)."""
    return sorted(
        name
        for name, policy in settings.secrets.items()
        if policy.hosts
        and "proxy" in policy.release
        and policy.allows_agent(agent)
        and policy.allows_host(scheme, host, port)
    )
