"""A whole session as a user runs it: init, allowlist, secrets, agent, start, calls, logs, stop.

Every response, and afterwards every file under BLINDKEY_HOME, is scanned for the values
in every encoding; none may appear.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

from blindkey.config.paths import Paths
from blindkey.redact.redactor import encodings
from tests.conftest import RunCli

VALUES = {
    "GITHUB_TOKEN": "ghp_e2eSessionToken0123456789abcdefXYZ",
    "API_KEY": "key/with+special=chars&more-0123456789",
    "BASIC_PAIR": "robot:pa55-w0rd-for-the-e2e-session",
}


def every_form(value: str) -> set[bytes]:
    raw = value.encode()
    forms = set(encodings(value)) | {
        raw,
        base64.b64encode(raw),
        quote(value).encode(),
        quote_plus(value).encode(),
        raw.hex().encode(),
    }
    # Long enough to mean the value, short enough to catch a partial leak.
    return {f for f in forms if len(f) >= 8}


def curl(
    port: int, token: str, target: str, *headers: str, data: str | None = None
) -> tuple[int, bytes]:
    command = [
        "curl",
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        f"http://127.0.0.1:{port}/proxy",
        "-H",
        f"X-AS-Agent-Token: {token}",
        "-H",
        f"X-AS-Target-URL: {target}",
    ]
    for header in headers:
        command += ["-H", header]
    if data is not None:
        command += ["--data-binary", data]
    result = subprocess.run(command, capture_output=True, timeout=30, check=True)
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code), body


def test_whole_session(run_cli: RunCli, home: Paths, upstream_port: int) -> None:
    upstream = f"http://127.0.0.1:{upstream_port}"
    assert run_cli("init").returncode == 0
    assert run_cli("allowlist", "add", upstream).returncode == 0
    for name, value in VALUES.items():
        result = run_cli("secrets", "set", name, input=value + "\n")
        assert result.returncode == 0, result.stderr
    added = run_cli("agent", "add", "session-agent", "--json")
    token = json.loads(added.stdout)["token"]
    assert set(json.loads(added.stdout)) == {"agent", "token"}

    began = time.monotonic()
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    startup = time.monotonic() - began
    port = json.loads(run_cli("proxy", "status", "--json").stdout)["port"]
    responses: list[bytes] = []
    try:
        calls = [
            ("bearer", "/echo", ["X-AS-Inject-Bearer: GITHUB_TOKEN"], None),
            ("basic", "/echo", ["X-AS-Inject-Basic: BASIC_PAIR"], None),
            ("header", "/echo", ["X-AS-Inject-Header-X-Api-Key: API_KEY"], None),
            ("query", "/echo?page=2", ["X-AS-Inject-Query-api_key: API_KEY"], None),
            (
                "body",
                "/echo",
                ["X-AS-Inject-Body-auth.token: GITHUB_TOKEN", "Content-Type: application/json"],
                '{"auth": {}}',
            ),
            (
                "form",
                "/echo",
                [
                    "X-AS-Inject-Form-secret: API_KEY",
                    "Content-Type: application/x-www-form-urlencoded",
                ],
                "a=1",
            ),
        ]
        for style, path, headers, data in calls:
            status, body = curl(port, token, upstream + path, *headers, data=data)
            assert status == 200, (style, body)
            assert b"[REDACTED:" in body, style
            responses.append(body)
        status, body = curl(port, token, upstream + "/echo", "X-AS-Inject-Bearer: NOPE")
        assert status == 404
        responses.append(body)

        # `proxy start` waited on /health: those answers have records too.
        logs = [r for r in json.loads(run_cli("proxy", "logs", "--json").stdout)
                if r.get("url") != "/health" and r.get("event") != "config"]  # fmt: skip
        assert [r["styles"] for r in logs[:6]] == [[c[0]] for c in calls]
        assert all(r["decision"] == "allowed" and r["agent"] == "session-agent" for r in logs[:6])
        assert logs[6]["decision"] == "blocked" and logs[6]["reason"] == "unknown_secret"
        assert logs[3]["url"] == f"{upstream}/echo?page=2&api_key={{API_KEY}}"
        blocked = json.loads(run_cli("proxy", "logs", "--json", "--status", "blocked").stdout)
        assert len(blocked) == 1
        table = run_cli("proxy", "logs", "--last", "2")
        assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 2
    finally:
        assert run_cli("proxy", "stop").returncode == 0
    assert run_cli("proxy", "status").returncode == 3
    assert startup < 10

    forms = {name: every_form(value) for name, value in VALUES.items()}
    for body in responses:
        for name, patterns in forms.items():
            assert not any(p in body for p in patterns), name
    for file in Path(home.config_dir).rglob("*"):
        if file.is_file():
            content = file.read_bytes()
            for name, patterns in forms.items():
                leaked = [p for p in patterns if p in content]
                assert not leaked, f"{name} found in {file}"
