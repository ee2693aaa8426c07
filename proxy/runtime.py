"""Everything a running proxy holds: settings, the guard, the broker link, the redactor."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.abc import AbstractResolver

from blindkey.audit.writer import AuditWriter
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import BrokerDenied, BrokerUnavailable, Message
from blindkey.config.errors import ConfigError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.proxy.egress import EgressGuard, VettingResolver
from blindkey.proxy.errors import STATUS, ProxyError
from blindkey.proxy.redact import Redactor
from blindkey.proxy.upstream import UpstreamLimits, UpstreamPool

log = logging.getLogger("blindkey.proxy")
MAX_CACHED_RESOLUTIONS = 4096


@dataclass(frozen=True)
class Grant:
    """What the broker released for one request."""

    agent: str
    env: str
    values: dict[str, str]
    redactor: Redactor


ResolutionKey = tuple[str | None, tuple[str, ...], str]
Resolution = tuple[str, str, "Grant | BrokerDenied"]
FileStamp = tuple[int, int, int, int]


def broker_socket(paths: Paths, settings: Settings) -> Path:
    """The socket of a broker run as its own service, else the one the proxy spawns."""
    return Path(settings.broker.socket) if settings.broker.socket else paths.broker_socket


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.proxy.ca_file:
        context.load_verify_locations(settings.proxy.ca_file)
    return context


class ProxyRuntime:
    def __init__(self, paths: Paths, settings: Settings, audit: AuditWriter) -> None:
        self.paths = paths
        self.settings = settings
        self.audit = audit
        self.own_port: int | None = None
        self.guard = EgressGuard(settings.allowlist)
        self.broker = BrokerClient(broker_socket(paths, settings), on_push=self._on_push)
        self._redactor = Redactor({})
        self._redactor_values: dict[str, str] = {}
        self._redactor_generation = -1
        self._redactor_lock = asyncio.Lock()
        self._resolutions: dict[ResolutionKey, Resolution] = {}
        self._resolutions_epoch = -1
        self._invalidations = 0
        self.upstream: UpstreamPool | None = None
        # The system resolver unless a test substitutes one (answers cannot be forged here).
        self.inner_resolver: AbstractResolver | None = None
        self.config_error: str | None = None
        self.config_generation = 0
        # Unknown: the settings we were given may predate the file; the first check reads it.
        self._config_stamp: FileStamp | None = None

    def open_upstream(self) -> None:
        self.upstream = self._new_upstream(self.settings)

    def _new_upstream(self, settings: Settings) -> UpstreamPool:
        limits = settings.limits
        return UpstreamPool(
            VettingResolver(self.guard, self.inner_resolver),
            _ssl_context(settings),
            UpstreamLimits(
                connect_timeout=limits.upstream_connect_timeout,
                read_timeout=settings.proxy.upstream_timeout,
                total_timeout=limits.upstream_total_timeout,
                max_field=limits.max_header_size,
            ),
        )

    def set_port(self, port: int) -> None:
        self.own_port = port
        self.guard.own_port = port

    async def reload(self) -> bool:
        """Re-read config.toml; a bad file is refused and the running settings kept."""
        return self._reload()

    def _file_stamp(self) -> FileStamp:
        try:
            st = self.paths.config_file.stat()
        except OSError:
            return (0, 0, 0, 0)
        # ctime and inode too: the CLI replaces the file, possibly within one mtime tick.
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def _reload_if_changed(self) -> None:
        if self._file_stamp() != self._config_stamp:
            self._reload()

    def _reload(self) -> bool:
        # Stamped before reading: a change made meanwhile is read next time.
        self._config_stamp = self._file_stamp()
        try:
            settings = load_settings(self.paths.config_file)
        except ConfigError as exc:
            self.config_error = str(exc)
            log.error("config refused, keeping the running one: %s", exc)
            return False
        previous = self.settings
        self.settings = settings
        self._resolutions.clear()
        self.config_error = None
        self.config_generation += 1
        self.guard.entries = settings.allowlist.entries
        self.guard.private_ranges = settings.allowlist.private_ranges
        pool = self.upstream
        if pool is None:
            return True
        if (settings.proxy, settings.limits) != (previous.proxy, previous.limits):
            # Requests in flight finish on the old pool, whose connections then close.
            pool.close()
            self.upstream = self._new_upstream(settings)
        elif settings.allowlist != previous.allowlist:
            # Open connections were vetted against the old private_ranges.
            pool.close_idle()
        return True

    def _on_push(self, message: Message) -> None:
        """An invalidation: the broker tells the CLI the change is in force once this
        returns (the acknowledgement follows it), so everything happens here, in line.

        config.toml is re-read here too, when it changed: the allowlist lives there and the
        proxy enforces it, so `allowlist add` must reach the proxy the same way a rotation
        does. One path (the CLI asks the broker, the broker asks every proxy and waits)
        keeps one answer to "is it in force?" for every change, reaches every proxy of a
        shared broker, and costs the proxy one stat per invalidation, none per request.
        """
        if message.get("event") == "invalidate":
            self._invalidations += 1
            self._redactor_generation = -1
            self._resolutions.clear()
            self._reload_if_changed()

    def _cached(self, key: ResolutionKey) -> Resolution | None:
        epoch = self.broker.connection_epoch
        if epoch != self._resolutions_epoch or not self.broker.connected:
            # A reconnect may have missed invalidations: forget everything. The broker could
            # not reach us meanwhile either, so a change the CLI made then (it found no
            # proxy to wait for) is read here: the handler resolves before it checks the
            # target against the allowlist.
            self._resolutions.clear()
            self._resolutions_epoch = epoch
            self._reload_if_changed()
            return None
        return self._resolutions.get(key)

    async def resolve(self, token: str | None, names: list[str], host: str) -> Resolution:
        """(agent, env, grant or the broker's refusal); raises for unauthenticated callers.

        Answers are kept until the broker pushes an invalidation (any change to secrets,
        agents or policy), so the hot path skips the socket round trip.
        """
        key = (token, tuple(names), host)
        cached = self._cached(key)
        if cached is not None:
            return cached
        epoch, invalidations = self.broker.connection_epoch, self._invalidations
        resolution = await self._ask_broker(token, names, host)
        # An invalidation handled while this call waited may be newer than its answer
        # (both can arrive in one read): the answer serves this call, which began before
        # the change, and no later one.
        unchanged = (
            epoch == self.broker.connection_epoch == self._resolutions_epoch
            and invalidations == self._invalidations
        )
        if unchanged:
            if len(self._resolutions) >= MAX_CACHED_RESOLUTIONS:
                self._resolutions.clear()
            self._resolutions[key] = resolution
        return resolution

    async def _ask_broker(self, token: str | None, names: list[str], host: str) -> Resolution:
        try:
            reply = await self.broker.call("resolve", token=token, names=names, host=host)
        except BrokerUnavailable as exc:
            raise ProxyError(
                "broker_unavailable",
                "the secret broker is not answering; it is being restarted, retry shortly",
            ) from exc
        except BrokerDenied as exc:
            raise ProxyError(_known_code(exc.code), str(exc)) from exc
        agent, env = str(reply["agent"]), str(reply["env"])
        denied = reply.get("denied")
        if denied:
            return agent, env, BrokerDenied(str(denied["error"]), str(denied["message"]))
        values: dict[str, str] = dict(reply["values"])
        redactor = await self._current_redactor(int(reply["generation"]), values)
        return agent, env, Grant(agent=agent, env=env, values=values, redactor=redactor)

    async def _current_redactor(self, generation: int, needed: Mapping[str, str]) -> Redactor:
        async with self._redactor_lock:
            if generation != self._redactor_generation:
                try:
                    reply = await self.broker.call("redaction_set")
                except BrokerUnavailable as exc:
                    raise ProxyError(
                        "broker_unavailable", "the secret broker is not answering"
                    ) from exc
                values = dict(reply["values"])
                self._redactor = Redactor(values)
                self._redactor_values = values
                self._redactor_generation = int(reply["generation"])
            redactor, known = self._redactor, self._redactor_values
        if all(known.get(name) == value for name, value in needed.items()):
            return redactor
        # The set changed between resolve and fetch: never stream without the used values.
        return Redactor({**known, **needed})

    async def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        await self.broker.close()

    def status_fields(self) -> dict[str, Any]:
        return {
            "backend": self.settings.backend,
            "env": self.settings.active_env,
            "config_error": self.config_error,
            "config_generation": self.config_generation,
        }


def _known_code(code: str) -> str:
    return code if code in STATUS else "bad_request"
