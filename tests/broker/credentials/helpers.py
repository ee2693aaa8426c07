"""A home whose config.toml declares computed secrets, and a broker serving it."""

from __future__ import annotations

from pathlib import Path

from blindkey.broker.agents import AgentStore
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import Message
from blindkey.broker.vault import FileVault
from blindkey.config.atomic import write_atomic
from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG


class Clock:
    """The broker's clock, moved by the test."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def configure(paths: Paths, secrets: str, allow: list[str], timeout: str = "30s") -> str:
    """Write config.toml (allowlist `allow`, the [secrets.*] tables) and an agent; its token."""
    hosts = ", ".join(f'"{h}"' for h in allow)
    text = DEFAULT_CONFIG.replace("hosts = []", f"hosts = [{hosts}]", 1).replace(
        'upstream_timeout = "30s"', f'upstream_timeout = "{timeout}"', 1
    )
    write_atomic(paths.config_file, (text + secrets).encode())
    return AgentStore(paths.agents_file, paths.lock_file).add("claude")


def store(paths: Paths, **values: str) -> None:
    FileVault(paths).update(lambda data: data.setdefault("development", {}).update(values))


def stored(paths: Paths, name: str) -> str:
    return FileVault(paths).load()["development"][name]


async def resolve(client: BrokerClient, token: str, *names: str) -> Message:
    return await client.call("resolve", token=token, names=list(names), host="api.example.com")


def everything_written(paths: Paths) -> bytes:
    """Every file under the home but the (encrypted) vault: audit, config, logs."""
    found = b""
    roots = {Path(paths.state_dir), Path(paths.config_file).parent}
    files = {f for root in roots for f in root.rglob("*") if f.is_file()}
    for file in sorted(files - {paths.vault_file}):
        found += file.read_bytes() + b"\n"
    return found
