"""An in-process proxy with its real broker subprocess, and a loopback upstream."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from blindkey.broker.agents import AgentStore
from blindkey.broker.vault import FileVault
from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.proxy.server import ProxyServer
from tests.upstream import RELEASE_SSE, start_upstream

SECRET = "ghp_Zx9Q7vLm2Kp4Rt8Wn3Yb6Hc1Jd5Fs0Ga"
OTHER = "sk_live_4eC39HqLyjWDarjtT1zdp7dc0000"
BASIC = "octocat:s3cr3t-Passw0rd-Value"


@dataclass
class Env:
    paths: Paths
    server: ProxyServer
    upstream_port: int
    upstream: web.AppRunner
    token: str
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/proxy"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def release_sse(self) -> None:
        self.upstream.app[RELEASE_SSE].set()

    def headers(self, path: str = "/echo", **extra: str) -> dict[str, str]:
        return self.to(self.base + path, **extra)

    def to(self, target: str, **extra: str) -> dict[str, str]:
        """Headers for a call to any target URL, with this env's agent token."""
        headers = {"X-AS-Agent-Token": self.token, "X-AS-Target-URL": target}
        # Python names (X_AS_Method) become header names; names already spelled with "-" stay.
        headers.update({k if "-" in k else k.replace("_", "-"): v for k, v in extra.items()})
        return headers

    async def call(
        self,
        method: str = "GET",
        path: str = "/echo",
        *,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, dict[str, str], bytes]:
        kwargs.setdefault("allow_redirects", False)
        async with self.session.request(method, self.url, headers=headers, **kwargs) as response:
            body = await response.read()
            return response.status, dict(response.headers), body

    def configure(self, change: Any) -> None:
        edit_config(self.paths.config_file, self.paths.lock_file, change)


class SkewedClock:
    """The event loop's clock (monotonic) plus time a test moves on at once, instead of
    sleeping until connections are old enough."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew

    def advance(self, seconds: float) -> None:
        self.skew += seconds


def set_secret_policy(paths: Paths, name: str, **fields: Any) -> None:
    def change(document: Any) -> None:
        section = toml_table(document, "secrets", name)
        for key, value in fields.items():
            section[key] = string_array(value) if isinstance(value, list) else value

    edit_config(paths.config_file, paths.lock_file, change)


@contextlib.asynccontextmanager
async def open_env(
    home: Paths,
    configure: Callable[[Any], None] | None = None,
    prepare: Callable[[ProxyServer], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Env]:
    """A running proxy with three secrets and an agent; `configure` edits config.toml
    before start, `prepare` adjusts the server object before it starts, `clock` is its
    connection guard's."""
    upstream, port = await start_upstream()

    def base_config(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"] = string_array([f"http://127.0.0.1:{port}"])
        toml_table(document, "proxy")["upstream_timeout"] = "1s"
        toml_table(document, "limits")["max_request_body"] = "64KiB"
        if configure is not None:
            configure(document)

    # Every step of the teardown runs even when one before it raises (a test's own stop
    # that failed, a setup step that failed): a server or upstream left listening makes
    # uvloop's loop.close() wait for its handles for ever, and pytest hangs instead of
    # reporting the failure.
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.push_async_callback(upstream.cleanup)
        cleanup.callback(upstream.app[RELEASE_SSE].set)
        edit_config(home.config_file, home.lock_file, base_config)
        vault = FileVault(home)
        vault.set("development", "GITHUB_TOKEN", SECRET)
        vault.set("development", "STRIPE_KEY", OTHER)
        vault.set("development", "BASIC_PAIR", BASIC)
        token = AgentStore(home.agents_file, home.lock_file).add("tester")
        server = ProxyServer(
            home, load_settings(home.config_file), host="127.0.0.1", port=0, clock=clock
        )
        if prepare is not None:
            prepare(server)
        await server.start()
        cleanup.push_async_callback(server.stop)
        session = aiohttp.ClientSession(auto_decompress=False)
        cleanup.push_async_callback(session.close)
        yield Env(home, server, port, upstream, token, session)


async def status_after_reload(
    env: Env, expected: int, headers: dict[str, str], code: str | None = None
) -> None:
    """Put an edit of config.toml in force (as the watcher would, without waiting for its
    poll), then one call answers `expected` (and error `code`)."""
    import orjson

    await env.server.reload()
    status, _, body = await env.call(headers=headers)
    assert status == expected, body
    if code is not None:
        assert orjson.loads(body)["error"] == code, body


async def eventually_status(
    env: Env,
    expected: int,
    headers: dict[str, str],
    timeout: float = 1.0,
    method: str = "GET",
    code: str | None = None,
) -> float:
    """Repeat a call until it answers `expected` (and error `code`); return how long it took."""
    import asyncio
    import time

    import orjson

    start = time.monotonic()
    while True:
        status, _, body = await env.call(method, headers=headers)
        elapsed = time.monotonic() - start
        if status == expected and (code is None or orjson.loads(body)["error"] == code):
            return elapsed
        if elapsed > timeout:
            raise AssertionError(f"still {status} after {elapsed:.2f}s, wanted {expected}")
        await asyncio.sleep(0.02)
