"""Reading a slow store (keychain, OpenBao) for the broker's state: off the event loop on
one thread of its own (keychain and HTTP clients are not shared across threads), one read
per name however many callers want it, and the store's failure kept for `proxy status`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from blindkey.broker.backends import BackendError
from blindkey.broker.cache import Fetched, ValueView
from blindkey.config.model import Settings

log = logging.getLogger("blindkey.broker")


class SlowStore:
    """The fetching half of BrokerState (broker/state.py)."""

    view: ValueView | None
    settings: Settings
    backend_error: str | None
    _fetching: dict[tuple[str, str], asyncio.Future[None]]
    _executor: ThreadPoolExecutor | None

    def _bump(self) -> None:
        raise NotImplementedError

    def _run(self, view: ValueView, env: str, names: list[str] | None) -> asyncio.Future[Fetched]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="blindkey-store")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, view.fetch, env, names)

    def _record(self, error: BackendError | None) -> None:
        message = None if error is None else str(error)
        if message is not None and message != self.backend_error:
            log.error("%s", message)
        self.backend_error = message

    async def _read(self, env: str, names: Iterable[str]) -> bool:
        """Read names the view lacks; False when the store failed (see backend_error)."""
        view = self.view
        if view is None or not view.remote:
            return True
        wanted = [n for n in dict.fromkeys(names) if (env, n) not in self._fetching]
        waiting = [self._fetching[(env, n)] for n in names if (env, n) in self._fetching]
        ok = True
        if wanted:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for name in wanted:
                self._fetching[(env, name)] = done
            try:
                fetched = await self._run(view, env, wanted)
            except BackendError as exc:
                self._record(exc)
                ok = False
            except Exception:
                log.exception("reading from %s failed", view.backend.describe())
                self._record(BackendError(f"{view.backend.describe()} failed; see the log"))
                ok = False
            else:
                self._record(None)
                if view is self.view and view.store(env, fetched, whole_env=False):
                    self._bump()
            finally:
                for name in wanted:
                    self._fetching.pop((env, name), None)
                done.set_result(None)
        for future in waiting:
            await future
        return ok

    async def sync(self) -> bool:
        """Read the whole active environment again (the cache renews before it expires)."""
        view = self.view
        if view is None or not view.remote:
            return True
        env = self.settings.active_env
        try:
            fetched = await self._run(view, env, None)
        except BackendError as exc:
            self._record(exc)
            return False
        except Exception:
            log.exception("reading from %s failed", view.backend.describe())
            self._record(BackendError(f"{view.backend.describe()} failed; see the log"))
            return False
        self._record(None)
        if view is self.view and view.store(env, fetched, whole_env=True):
            self._bump()
        return True
