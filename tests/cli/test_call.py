"""`blindkey call`: one request through the running proxy (same checks, same record), the
answer printed as the proxy redacted it, exit 0 on 2xx and 1 otherwise."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from blindkey.config.edit import edit_config, toml_table
from blindkey.config.paths import Paths
from tests.conftest import ROOT
from tests.proxy.conftest import BASIC, OTHER, SECRET, Env, open_env
from tests.upstream import HITS


async def call(
    env: Env | Paths, *args: str, token: str | None = "", stdin: bytes = b""
) -> tuple[int, bytes, bytes]:
    """`blindkey call ARGS` with the env's agent token (token=None: none, else that one)."""
    paths = env.paths if isinstance(env, Env) else env
    variables = {**os.environ, "BLINDKEY_HOME": str(paths.config_dir)}
    variables.pop("BLINDKEY_AGENT_TOKEN", None)
    if token is not None:
        variables["BLINDKEY_AGENT_TOKEN"] = token or (env.token if isinstance(env, Env) else "")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blindkey.cli", "call", *args,
        cwd=ROOT, env=variables, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out, err


async def test_injections_and_body(home: Paths, tmp_path: Path) -> None:
    async with open_env(home) as env:
        body_file = tmp_path / "body.json"
        body_file.write_bytes(b'{"model": "m"}')
        status, out, err = await call(
            env,
            "--url", f"{env.base}/things?page=2",
            "--bearer", "GITHUB_TOKEN",
            "--header", "X-Stripe=STRIPE_KEY",
            "--query", "key=STRIPE_KEY",
            "--body-field", "auth.token=BASIC_PAIR",
            "-H", "X-Trace: abc",
            "-H", "X-Note: café",
            "-d", f"@{body_file}",
        )  # fmt: skip
        assert (status, err) == (0, b"")
        echoed = orjson.loads(out)
        assert echoed["method"] == "POST"
        assert echoed["path"].startswith("/things?page=2&key=")
        sent = dict(echoed["headers"])
        assert sent["X-Trace"] == "abc"
        assert sent["X-Note"] == "café"  # sent as UTF-8, read back as UTF-8 by the upstream
        assert sent["X-Stripe"] == "[REDACTED:STRIPE_KEY]"
        assert orjson.loads(echoed["body"]) == {
            "model": "m",
            "auth": {"token": "[REDACTED:BASIC_PAIR]"},
        }
        assert not any(v.encode() in out for v in (SECRET, OTHER, BASIC))
        ((_, path, headers),) = env.upstream.app[HITS]
        assert path == f"/things?page=2&key={OTHER}"
        assert headers["Authorization"] == f"Bearer {SECRET}"
        await env.server.audit.flush()
        record = orjson.loads((env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()[-1])
        assert (record["agent"], record["decision"]) == ("tester", "allowed")
        assert record["url"].endswith("/things?page=2&key={STRIPE_KEY}")


async def test_include_headers_and_exit_status_by_class(home: Paths) -> None:
    async with open_env(home) as env:
        bearer = ("--bearer", "GITHUB_TOKEN")
        status, out, _ = await call(
            env, "-i", "--url", f"{env.base}/echo", *bearer, "--method", "put"
        )
        assert status == 0
        head, _, body = out.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 200 OK"
        assert "X-Echo-Authorization: Bearer [REDACTED:GITHUB_TOKEN]" in lines
        digest = hashlib.sha256(f"Bearer {SECRET}".encode()).hexdigest()
        assert f"X-Echo-Authorization-Sha256: {digest}" in lines
        assert orjson.loads(body)["method"] == "PUT"

        # A 3xx of the upstream is an answer, not success.
        status, out, err = await call(env, "--url", f"{env.base}/redirect", *bearer)
        assert (status, out, err) == (1, b"", b"")


GH = "GITHUB_TOKEN"
REFUSALS = [
    (["--url", "http://127.0.0.1:9/x", "--bearer", GH], "", "host_not_allowed", ""),
    (["--url", "{base}/x", "--bearer", "NOPE"], "", "unknown_secret", ""),
    (["--url", "{base}/x", "--bearer", GH], "bk_wrong", "unauthenticated", ""),
    (["--url", "{base}/x", "--bearer", GH], None, "unauthenticated", "set BLINDKEY_AGENT_TOKEN"),
]


async def test_refusals_print_the_error_and_exit_1(env: Env) -> None:
    for args, token, code, hint in REFUSALS:
        status, out, err = await call(env, *[a.format(base=env.base) for a in args], token=token)
        assert status == 1
        assert orjson.loads(out)["error"] == code
        assert err.startswith(b"blindkey: 4") and code.encode() in err
        assert hint.encode() in err
    assert env.upstream.app[HITS] == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "call needs a secret to inject"),
        (["--bearer", "A", "--basic", "B"], "one --bearer or --basic"),
        (["--header", "X"], "--header takes H=S"),
        (["--query", "k="], "--query takes P=S"),
        (["--bearer", "A", "-H", "NoColon"], "-H takes 'Name: value'"),
        (["--bearer", "A", "-H", "X-AS-Target-URL: y"], "X-AS-* headers"),
        (["--bearer", "A", "-d", "@/nonexistent"], "-d @/nonexistent"),
        (["--bearer", "A", "-H", "X-Bad: a\r\nInjected: b"], "-H takes 'Name: value'"),
        (["--bearer", "A", "--method", "GET /x"], "not an HTTP method"),
    ],
)
async def test_bad_flags_are_refused_before_anything_is_sent(
    home: Paths, args: list[str], fragment: str
) -> None:
    status, out, err = await call(home, "--url", "http://x.example/", *args)
    assert status in (1, 2) and out == b""
    assert fragment.encode() in err and err.count(b"\n") == 1


async def test_no_proxy_running(home: Paths) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def point(document: Any) -> None:
        toml_table(document, "proxy")["port"] = port

    edit_config(home.config_file, home.lock_file, point)
    status, out, err = await call(home, "--url", "http://x.example/", "--bearer", "A")
    assert (status, out) == (1, b"")
    expected = f"no proxy answers on 127.0.0.1:{port}; start it with `blindkey proxy start`"
    assert err == f"blindkey: {expected}\n".encode()
