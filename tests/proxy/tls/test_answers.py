"""Proxy mode's answers and placeholder shapes: a value swapped in anywhere comes back
`[REDACTED:NAME]` wherever the upstream echoes it; a placeholder echoed back is left as it
is (it is a name the client already holds, and opens nothing without the agent's token);
`[secrets.NAME] placeholder_prefix` makes placeholders a key check accepts, and only the
whole placeholder, prefix included, is swapped."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import orjson
import pytest

from blindkey.broker.placeholders import ensure_key, placeholder
from blindkey.broker.vault import FileVault
from blindkey.config.edit import edit_config, toml_table
from blindkey.config.errors import ConfigError
from blindkey.config.paths import Paths
from tests.proxy.conftest import OTHER, SECRET
from tests.proxy.tls.conftest import STRIPE_PREFIX, Mode, curl
from tests.upstream import HITS

# Where a client puts the placeholder (curl arguments; {p} is the placeholder).
PLACES = {
    "header": ["-H", "X-Api-Key: {p}"],
    "basic": ["--user", "x-access-token:{p}"],
    "path": [],
    "query": [],
    "json": ["-H", "Content-Type: application/json", "--data", '{{"a": {{"b": ["{p}"]}}}}'],
    "form": ["-H", "Content-Type: application/x-www-form-urlencoded", "--data", "k={p}&z=1"],
    "text": ["-H", "Content-Type: text/plain", "--data", "the key is {p}."],
}


def url_for(base: str, where: str, placeholder: str) -> str:
    return {"path": f"{base}/echo/{placeholder}", "query": f"{base}/echo?k={placeholder}"}.get(
        where, f"{base}/echo"
    )


@pytest.mark.parametrize("where", sorted(PLACES))
async def test_an_echoed_value_comes_back_redacted(mode: Mode, where: str) -> None:
    held = mode.placeholders["GITHUB_TOKEN"]
    url = url_for(f"https://127.0.0.1:{mode.bound_port}", where, held)
    args = [a.format(p=held) for a in PLACES[where]]
    status, out = await curl(mode, url, "-i", *args)
    assert status == 0, out
    _, path, headers = mode.bound.app[HITS][-1]
    seen = path + str(headers)
    assert held not in seen  # the upstream got the value, never the placeholder
    assert SECRET.encode() not in out
    # -i: the CONNECT's 200, then the answer's head, then its body.
    head, _, body = out.rpartition(b"\r\n\r\n")
    assert b"[REDACTED:GITHUB_TOKEN]" in body, body
    if where == "basic":  # the echo's Set-Cookie and X-Echo-Authorization carry it too
        assert b"[REDACTED:GITHUB_TOKEN]" in head, head


async def test_a_placeholder_the_upstream_echoes_is_left_as_it_is(mode: Mode) -> None:
    """A body that is not text is not searched (it streams): the placeholder in it goes as
    it is, and comes back as it is."""
    held = mode.placeholders["GITHUB_TOKEN"]
    url = f"https://127.0.0.1:{mode.bound_port}/echo"
    status, out = await curl(mode, url, "-H", "Content-Type: application/octet-stream",
                             "--data-binary", f"raw {held}")  # fmt: skip
    assert status == 0, out
    assert orjson.loads(out)["body"] == f"raw {held}"


async def test_a_prefixed_placeholder_is_swapped_whole(mode: Mode) -> None:
    held = mode.placeholders["STRIPE_KEY"]
    assert held.startswith(f"{STRIPE_PREFIX}bk_")
    url = f"https://127.0.0.1:{mode.other_port}/echo"
    status, out = await curl(mode, url, "-H", f"Authorization: Bearer {held}")
    assert status == 0, out
    assert mode.other is not None
    _, _, headers = mode.other.app[HITS][-1]
    assert headers["Authorization"] == f"Bearer {OTHER}"
    assert "Bearer [REDACTED:STRIPE_KEY]" in out.decode() and OTHER.encode() not in out
    # Without its prefix it is not the placeholder: nothing is swapped, nothing released.
    bare = held.removeprefix(STRIPE_PREFIX)
    status, out = await curl(mode, url, "-H", f"Authorization: Bearer {bare}")
    assert status == 0, out
    _, _, headers = mode.other.app[HITS][-1]
    assert headers["Authorization"] == f"Bearer {bare}"


async def test_a_prefixed_placeholder_headed_elsewhere_is_refused(mode: Mode) -> None:
    held = mode.placeholders["STRIPE_KEY"]
    url = f"https://127.0.0.1:{mode.bound_port}/echo"
    hits = len(mode.bound.app[HITS])
    _, out = await curl(mode, url, "-H", f"X-Key: {held}", "-w", "\n%{http_code}")
    assert out.endswith(b"\n403") and b"secret_denied" in out
    assert len(mode.bound.app[HITS]) == hits


async def test_secrets_placeholder_prints_the_prefix_without_a_broker(home: Paths) -> None:
    """No broker runs: the CLI works the placeholder out itself, with the same prefix."""

    def prefix(document: Any) -> None:
        toml_table(document, "secrets", "STRIPE_KEY")["placeholder_prefix"] = STRIPE_PREFIX

    edit_config(home.config_file, home.lock_file, prefix)
    FileVault(home).set("development", "STRIPE_KEY", OTHER)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "secrets", "placeholder", "STRIPE_KEY", "--json",
        env={**os.environ, "BLINDKEY_HOME": str(home.config_dir)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err
    expected = placeholder(ensure_key(home), "development", "STRIPE_KEY", OTHER, STRIPE_PREFIX)
    assert orjson.loads(out)["placeholder"] == expected


@pytest.mark.parametrize("bad", ["sk key", "a/b", "x" * 33, "é"])
async def test_a_prefix_that_would_need_escaping_is_refused(home: Paths, bad: str) -> None:
    def prefix(document: Any) -> None:
        toml_table(document, "secrets", "STRIPE_KEY")["placeholder_prefix"] = bad

    with pytest.raises(ConfigError, match="placeholder_prefix"):
        edit_config(home.config_file, home.lock_file, prefix)
