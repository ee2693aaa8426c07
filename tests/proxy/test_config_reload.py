"""A config.toml emptied or broken in place (an editor saving, a full disk) is refused:
the running configuration stays, and `proxy status` says why."""

from __future__ import annotations

import asyncio

import orjson

from blindkey.config.paths import Paths
from blindkey.proxy.server import settled
from tests.proxy.conftest import Env


def status_file(paths: Paths) -> dict[str, object]:
    status = orjson.loads(paths.status_file.read_bytes())
    assert isinstance(status, dict)
    return status


async def test_an_emptied_file_is_refused_and_calls_keep_working(env: Env) -> None:
    env.paths.config_file.write_bytes(b"")  # truncated in place, as an editor starts a save
    assert await env.server.reload() is False
    status = status_file(env.paths)
    assert "empty" in str(status["config_error"])
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN")
    assert (await env.call(headers=headers))[0] == 200  # the allowlist did not vanish


async def test_a_broken_file_is_refused_and_a_fixed_one_applies(env: Env) -> None:
    good = env.paths.config_file.read_bytes()
    env.paths.config_file.write_bytes(good.replace(b"[limits]", b"[limits"))
    assert await env.server.reload() is False
    assert status_file(env.paths)["config_error"]
    env.paths.config_file.write_bytes(good)
    assert await env.server.reload() is True
    assert status_file(env.paths)["config_error"] is None


def test_a_change_applies_only_once_the_file_has_stopped_changing() -> None:
    applied, half, whole = (1, 1, 10, 1), (2, 2, 5, 1), (3, 3, 10, 1)
    # Poll by poll, an editor writing half the file, then the rest, then nothing more.
    apply, seen = settled(half, applied, None)
    assert not apply  # changed: wait
    apply, seen = settled(whole, applied, seen)
    assert not apply  # changed again: the half was never applied
    apply, seen = settled(whole, applied, seen)
    assert apply and seen is None  # unchanged for one poll: apply
    assert settled(whole, whole, None) == (False, None)  # applied: nothing to do


async def test_the_watcher_applies_a_settled_change_once(env: Env) -> None:
    before = env.server.runtime.config_generation
    text = env.paths.config_file.read_text()
    env.paths.config_file.write_text(text.replace("max_headers = 100", "max_headers = 90"))
    for _ in range(100):  # the watcher polls every 0.25 s and waits one poll to settle
        if env.server.runtime.config_generation > before:
            break
        await asyncio.sleep(0.05)
    assert env.server.runtime.settings.limits.max_headers == 90
    assert env.server.runtime.config_generation == before + 1
