"""What a running proxy's stages share: the settings (and their reload), the egress policy,
the authoriser (broker link) and the pool of upstream connections."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp.abc import AbstractResolver

from blindkey.audit.writer import AuditWriter
from blindkey.broker.policy import policy_view, widenings
from blindkey.config.errors import BlindkeyError, ConfigError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.proxy.request.approval_wait import ApprovalWaits
from blindkey.proxy.request.authorise import Authoriser
from blindkey.proxy.request.egress import EgressPolicy, VettingResolver
from blindkey.proxy.trust import upstream_context
from blindkey.proxy.upstream import UpstreamLimits, UpstreamPool
from blindkey.redact.cache import cache_dir

log = logging.getLogger("blindkey.proxy")


FileStamp = tuple[int, int, int, int]


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    return upstream_context(settings.proxy.ca_file)  # the system's CAs loaded once (trust.py)


class ProxyRuntime:
    def __init__(
        self,
        paths: Paths,
        settings: Settings,
        audit: AuditWriter,
        *,
        on_reloaded: Callable[[], None] = lambda: None,
    ) -> None:
        self.paths = paths
        self.settings = settings
        self.audit = audit
        self.own_port: int | None = None
        self.egress = EgressPolicy(settings.allowlist)
        # Calls waiting for a human, woken by the broker's pushes the authoriser receives.
        self.waits = ApprovalWaits()
        self.authoriser = Authoriser(
            paths.broker_socket_at(settings.broker.socket),
            self._reload_if_changed,
            self.waits.pushed,
            cache_dir(paths.state_dir),
        )
        self.upstream: UpstreamPool | None = None
        # The system resolver unless a test substitutes one (answers cannot be forged here).
        self.inner_resolver: AbstractResolver | None = None
        self.config_error: str | None = None
        self.config_generation = 0
        # Unknown: the settings we were given may predate the file; the first check reads it.
        self._config_stamp: FileStamp | None = None
        self.broker_error: str | None = None
        # The broker serves its approved policy, not this file (a widening awaits a code).
        self.policy_refused: str | None = None
        self._recheck: asyncio.Task[bool] | None = None
        # Unknown until the broker says: judged by it (a widening waits for its word).
        self._same_file = True
        # Told of every reload, whichever path caused it (push, watcher, SIGHUP).
        self.on_reloaded = on_reloaded

    def open_upstream(self) -> None:
        self.upstream = self._new_upstream(self.settings)

    def _new_upstream(self, settings: Settings) -> UpstreamPool:
        limits = settings.limits
        return UpstreamPool(
            VettingResolver(self.egress, self.inner_resolver),
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
        self.egress.own_port = port

    async def reload(self) -> bool:
        """Re-read config.toml; a bad file is refused and the running settings kept. The
        broker is asked first: a file that widens the approved policy is reported refused."""
        try:
            # Not `config`: that would push an invalidation back here, and round again.
            reply = await self.authoriser.broker.call("refresh")
        except BlindkeyError:
            pass  # no broker: its own start reads the file and judges it
        else:
            self._learn(reply)
            self.policy_refused = reply.get("policy_refused")
        if self.policy_refused is not None:
            # The running allowlist stays too: the file is applied once it is approved.
            self._config_stamp = self.file_stamp()
            self.on_reloaded()
            return False
        if self._widens_unapproved():
            # The broker judged another text (the file changed since): the watcher asks again.
            self._config_stamp = None
            return False
        return self._reload()

    def _learn(self, reply: dict[str, Any]) -> None:
        """Whether the broker judges this proxy's config.toml (single-user: one file) and
        which text of it it serves."""
        judged = reply.get("config_file")
        if judged is not None:
            self._same_file = judged == str(self.paths.config_file)
        self.authoriser.config_sha256 = reply.get("config_sha256")

    def file_stamp(self) -> FileStamp:
        try:
            st = self.paths.config_file.stat()
        except OSError:
            return (0, 0, 0, 0)
        # ctime and inode too: the CLI replaces the file, possibly within one mtime tick.
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    @property
    def applied_stamp(self) -> FileStamp | None:
        return self._config_stamp

    def _reload_if_changed(self) -> None:
        if self.policy_refused is not None:
            # The broker refused this file: ask it again (an approval?) rather than apply it.
            self._ask_broker_then_reload()
        elif self.file_stamp() != self._config_stamp:
            if self._widens_unapproved():
                # Applied only once the broker has judged this text (reload asks it).
                self._ask_broker_then_reload()
            else:
                self._reload()

    def _ask_broker_then_reload(self) -> None:
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.get_running_loop().create_task(
                self.reload(), name="proxy-policy-recheck"
            )

    def _widens_unapproved(self) -> bool:
        """Whether config.toml on disk widens the running policy and is not the text the
        broker last said it serves (an edit the broker has not judged, or refused)."""
        try:
            raw = self.paths.config_file.read_bytes()
            settings = load_settings(self.paths.config_file)
        except (ConfigError, OSError):
            return False  # _reload refuses it and says why
        on_disk, served = hashlib.sha256(raw).hexdigest(), self.authoriser.config_sha256
        if not self._same_file or (
            served is not None and hmac.compare_digest(on_disk.encode(), served.encode())
        ):
            return False
        return bool(widenings(policy_view(self.settings), policy_view(settings), lambda _: True))

    def _reload(self) -> bool:
        # Stamped before reading: a change made meanwhile is read next time.
        self._config_stamp = self.file_stamp()
        try:
            if not self.paths.config_file.read_bytes().strip():
                # An editor truncates before it writes: never take that for "no allowlist".
                raise ConfigError(f"{self.paths.config_file}: the file is empty")
            settings = load_settings(self.paths.config_file)
        except (ConfigError, OSError) as exc:
            self.config_error = str(exc)
            log.error("config refused, keeping the running one: %s", exc)
            self.on_reloaded()
            return False
        previous = self.settings
        self.settings = settings
        self.authoriser.forget()
        self.config_error = None
        self.config_generation += 1
        self.on_reloaded()
        self.egress.update(settings.allowlist)
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

    async def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck
        if self.upstream is not None:
            self.upstream.close()
        self.waits.release()
        await self.authoriser.close()

    async def check_broker(self) -> bool:
        """Whether the broker can serve (its vault, key and agents loaded); the reason when
        not is kept in `broker_error` for `proxy status`. Health means serving."""
        try:
            reply = await self.authoriser.broker.call("ping")
        except BlindkeyError:
            error: str | None = "the secret broker is not answering"
        else:
            serving = reply.get("serving", True)
            error = None if serving else reply.get("error_state") or "the broker loaded nothing"
            if error is None and reply.get("approvals_error"):
                error = f"approvals: {reply['approvals_error']}"
            self._learn(reply)
            refused = reply.get("policy_refused")
            if refused != self.policy_refused:
                self.policy_refused = refused
                self.on_reloaded()
                if refused is None:
                    self._reload()  # approved meanwhile: the file applies now
        if error != self.broker_error:
            self.broker_error = error
            self.on_reloaded()  # the status file says so
        return error is None

    def status_fields(self) -> dict[str, Any]:
        return {
            "broker_error": self.broker_error,
            "backend": self.settings.backend,
            "env": self.settings.active_env,
            "config_error": self.config_error or self.policy_refused,
            "config_generation": self.config_generation,
        }
