"""`git clone` over https through `blindkey run`, as an agent runs it: git holds only the
placeholder (in the URL's password), the upstream is a real `git http-backend` behind a TLS
server (trustme) that demands Basic auth with the real token. The clone succeeds with the
repository's content, the upstream saw the value, and git's own config kept the
placeholder."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from blindkey.config.paths import Paths
from tests.cli.test_run_proxy_mode import HOST, blindkey, proxy_for, upstream_tls
from tests.proxy.conftest import SECRET

USER = "x-access-token"
ROOT = web.AppKey("root", Path)
SEEN = web.AppKey("seen", list)
CONTENT = "hello from the upstream repository\n"


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=git_env())


def git_env(home: Path | None = None) -> dict[str, str]:
    """git told nothing of the caller's own configuration."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return {**keep, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0", **({"HOME": str(home)} if home else {})}  # fmt: skip


async def backend(request: web.Request) -> web.StreamResponse:
    """`git http-backend` as CGI, behind Basic auth with the real token."""
    authorization = request.headers.get("Authorization", "")
    request.app[SEEN].append(authorization)
    wanted = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    if authorization != wanted:
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="git"'})
    body = await request.read()
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_PROJECT_ROOT": str(request.app[ROOT]),
        "GIT_HTTP_EXPORT_ALL": "1",
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query_string,
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_USER": USER,
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
        "HTTP_GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    process = await asyncio.create_subprocess_exec(
        "git", "http-backend", env=environment,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate(body)
    head, _, payload = out.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n") if line)
    status = int(headers.pop("Status", "200").split()[0])
    return web.Response(status=status, body=payload, headers=headers)


@dataclass
class Served:
    home: Paths
    port: int
    app: web.Application
    work: Path


@pytest.fixture
async def served(home: Paths, tmp_path: Path) -> AsyncIterator[Served]:
    source, root = tmp_path / "source", tmp_path / "root"
    source.mkdir()
    root.mkdir()
    git("init", "-q", "-b", "main", str(source))
    (source / "README").write_text(CONTENT)
    git("add", "README", cwd=source)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "one", cwd=source)
    git("clone", "-q", "--bare", str(source), str(root / "repo.git"))

    upstream_ca, context = upstream_tls(tmp_path)
    app = web.Application()
    app[ROOT], app[SEEN] = root, []
    app.router.add_route("*", "/{tail:.*}", backend)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, HOST, 0, ssl_context=context).start()
    port = int(runner.addresses[0][1])
    try:
        async with proxy_for(home, "GIT_TOKEN", port, upstream_ca):
            yield Served(home, port, app, tmp_path / "work")
    finally:
        await runner.cleanup()


async def test_git_clone_with_the_placeholder_in_its_url(served: Served) -> None:
    served.work.mkdir()
    url = f"https://{USER}:$GIT_TOKEN@{HOST}:{served.port}/repo.git"
    status, out, err = await blindkey(
        served.home, "run", "--agent", "gitter", "--secret", "GIT_TOKEN", "--",
        "sh", "-c", f'git clone -q "{url}" "{served.work}/clone"', extra=git_env(served.work),
    )  # fmt: skip
    assert status == 0, err
    clone = served.work / "clone"
    assert (clone / "README").read_text() == CONTENT
    assert SECRET not in out + err
    config = (clone / ".git" / "config").read_text()
    assert f"{USER}:bk_" in config and SECRET not in config  # git kept what it held
    wanted = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    assert wanted in served.app[SEEN]  # the upstream saw the value
