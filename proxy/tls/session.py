"""An intercepted tunnel's session: what every request inside it is known by."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Session:
    """An intercepted tunnel: what every request inside it is known by."""

    host: str
    port: int
    token: str
    agent: str
    env: str
    placeholders: dict[str, str] = field(default_factory=dict)  # placeholder -> secret
