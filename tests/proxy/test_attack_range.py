"""The slice attack: the agent stores a value on a Range-capable store (a real nginx with
WebDAV PUT) by body injection, then reads it back in windows shorter than the value, none
long enough to redact. Range and If-Range are stripped and a part (206) is refused unless
every secret of the call allows it ([secrets.NAME] allow_range)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from blindkey.config.edit import string_array, toml_table
from blindkey.config.paths import Paths
from tests.proxy.conftest import SECRET, Env, open_env, set_secret_policy
from tests.proxy.nginx import Nginx, running_nginx
from tests.proxy.upstream.test_pool import answer_each, serve

WINDOW = 7  # shorter than any value the redactor will look for


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[Nginx]:
    async with running_nginx(tmp_path / "nginx") as server:
        yield server


def allow(port: int) -> Any:
    def change(document: Any) -> None:
        hosts = [*toml_table(document, "allowlist")["hosts"], f"http://127.0.0.1:{port}"]
        toml_table(document, "allowlist")["hosts"] = string_array(hosts)

    return change


async def store_and_slice(env: Env, nginx: Nginx, **extra: str) -> tuple[bytes, list[int]]:
    """PUT the value into a file by body injection, then GET it back in windows."""
    url = f"http://127.0.0.1:{nginx.port}/store/key.json"
    headers = env.to(url, X_AS_Method="PUT", **{"X-AS-Inject-Body-key": "GITHUB_TOKEN"})
    status, _, body = await env.call("POST", headers=headers, data=b"{}")
    assert status in (201, 204), body
    stored = (nginx.www / "store" / "key.json").read_bytes()
    assert SECRET.encode() in stored  # the attack's first step works: the value is stored
    read_back, statuses = b"", []
    for start in range(0, len(stored), WINDOW):
        window = f"bytes={start}-{start + WINDOW - 1}"
        headers = env.to(url, X_AS_Inject_Bearer="GITHUB_TOKEN", Range=window, **extra)
        status, _, body = await env.call("GET", headers=headers)
        statuses.append(status)
        read_back += body if status == 206 else b""
    return read_back, statuses


async def test_a_stored_value_cannot_be_read_back_in_slices(home: Paths, nginx: Nginx) -> None:
    async with open_env(home, configure=allow(nginx.port)) as env:
        etag_check = {"If-Range": "*"}
        read_back, statuses = await store_and_slice(env, nginx, **etag_check)
        assert set(statuses) == {200}  # Range never reached nginx: whole, redacted answers
        assert SECRET.encode() not in read_back and read_back == b""
        url = f"http://127.0.0.1:{nginx.port}/store/key.json"
        headers = env.to(url, X_AS_Inject_Bearer="GITHUB_TOKEN", Range="bytes=0-6")
        status, answer_headers, body = await env.call("GET", headers=headers)
        assert status == 200 and "Content-Range" not in answer_headers
        assert orjson.loads(body) == {"key": "[REDACTED:GITHUB_TOKEN]"}


async def test_with_allow_range_the_slices_are_read_as_documented(
    home: Paths, nginx: Nginx
) -> None:
    """The opt-in does what SECURITY.md warns: a value comes back in slices."""
    async with open_env(home, configure=allow(nginx.port)) as env:
        set_secret_policy(env.paths, "GITHUB_TOKEN", allow_range=True)
        await env.server.reload()
        read_back, statuses = await store_and_slice(env, nginx)
        assert set(statuses) == {206}
        assert SECRET.encode() in read_back


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-6/40\r\n"
        b"Content-Length: 7\r\n\r\n" + SECRET[:7].encode(),
        b"HTTP/1.1 200 OK\r\nContent-Range: bytes 7-13/40\r\n"
        b"Content-Length: 7\r\n\r\n" + SECRET[7:14].encode(),
    ],
    ids=["206", "200-with-content-range"],
)
async def test_a_part_sent_unasked_is_refused(home: Paths, answer: bytes) -> None:
    """An upstream may answer with parts without a Range header (S3's ?partNumber=)."""
    async with serve(answer_each(answer)) as server, open_env(home, allow(server.port)) as env:
        target = f"http://127.0.0.1:{server.port}/object?partNumber=1"
        status, _, body = await env.call(
            "GET", headers=env.to(target, X_AS_Inject_Bearer="GITHUB_TOKEN")
        )
        error = orjson.loads(body)
        assert (status, error["error"]) == (502, "upstream_error")
        assert "allow_range" in error["message"]
        assert SECRET[:7].encode() not in body and SECRET[7:14].encode() not in body
