"""Proxy mode in the hardened deployment: the proxy runs as its own user with the CA that its
`init` made; the CA key is that user's only. The agent's user cannot read it (nor list the
proxy's home), and proxy mode still works for it: curl as the agent's user, holding only a
placeholder and the CA certificate the administrator handed out, reaches a TLS upstream
that sees the value, and is answered through a leaf of the proxy's CA.

Real users (bk-broker, bk-proxy, bk-agent; tests/users.py) and blindkey from its wheel, as
in tests/broker/test_separate_user.py, whose deployment this reuses."""

from __future__ import annotations

import json
import pwd
import shutil
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from tests.broker.test_separate_user import (
    AGENT,
    BROKER,
    PROXY,
    VALUE,
    Deployment,
    _configure,
    broker_service,
    deployment,
)

__all__ = ["broker_service", "deployment"]  # the fixtures, shared with the broker's tests

pytestmark = pytest.mark.timeout(300)


class Upstream(ThreadingHTTPServer):
    seen: list[str]


class Echo(BaseHTTPRequestHandler):
    """Answers with the Authorization it was sent, as a careless API might."""

    server: Upstream

    def do_GET(self) -> None:
        authorization = self.headers.get("Authorization", "")
        self.server.seen.append(authorization)
        body = json.dumps({"authorization": authorization}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def tls_upstream(deployment: Deployment) -> Iterator[tuple[Upstream, Path]]:
    """A TLS upstream on 127.0.0.1 (trustme) in a thread; its CA in a file bk-proxy reads."""
    ca = trustme.CA()
    ca_file = deployment.base / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca_file.chmod(0o644)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = Upstream(("127.0.0.1", 0), Echo)
    server.seen = []
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="tls-upstream", daemon=True)
    thread.start()
    try:
        yield server, ca_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _bind(config: Path, host: str, upstream_ca: Path | None) -> None:
    """GH bound to the upstream (both homes: the broker decides, the proxy intercepts)."""
    text = config.read_text()
    if upstream_ca is not None:
        text = text.replace('ca_file = ""', f'ca_file = "{upstream_ca}"', 1)
    config.write_text(text + f'\n[secrets.GH]\nhosts = ["{host}"]\n')


def test_agent_cannot_read_the_ca_key_and_proxy_mode_still_works(  # and the audit's signing key
    deployment: Deployment,
    broker_service: subprocess.Popen[bytes],
    tls_upstream: tuple[Upstream, Path],
) -> None:
    upstream, upstream_ca = tls_upstream
    host = f"https://127.0.0.1:{upstream.server_address[1]}"
    proxy_home = deployment.proxy_home
    deployment.blindkey(PROXY, proxy_home, "init")
    _configure(proxy_home / "config.toml", deployment.socket, [])
    _bind(proxy_home / "config.toml", host, upstream_ca)
    _bind(deployment.broker_home / "config.toml", host, None)
    deployment.blindkey(PROXY, proxy_home, "allowlist", "add", host)

    ca_path = Path(deployment.blindkey(PROXY, proxy_home, "ca", "path").strip())
    _private_to_the_proxy(deployment, ca_path.with_name("ca.key"))
    # The certificate is public: the administrator hands it to the agent's user.
    handed = deployment.base / "blindkey-ca.pem"
    shutil.copyfile(ca_path, handed)
    handed.chmod(0o644)

    placeholder = deployment.blindkey(
        BROKER, deployment.broker_home, "secrets", "placeholder", "GH"
    ).strip()
    deployment.blindkey(PROXY, proxy_home, "proxy", "start", "--port", "0")
    try:
        status = json.loads(deployment.blindkey(PROXY, proxy_home, "proxy", "status", "--json"))
        proxy = f"http://agent:{deployment.token}@127.0.0.1:{status['port']}"
        called = deployment.run(
            AGENT, "curl", "-sS", "--proxy", proxy, "--noproxy", "", "--cacert", str(handed),
            "-H", f"Authorization: Bearer {placeholder}", f"{host}/echo", check=False,
        )  # fmt: skip
    finally:
        deployment.blindkey(PROXY, proxy_home, "proxy", "stop")
    assert called.returncode == 0, called.stderr
    assert upstream.seen == [f"Bearer {VALUE}"]
    assert json.loads(called.stdout) == {"authorization": "Bearer [REDACTED:GH]"}
    assert VALUE not in called.stdout + called.stderr
    # The audit's signing key, made by the proxy's writer at start: whoever reads it could
    # sign a forged copy of the audit.
    _private_to_the_proxy(deployment, proxy_home / "audit" / "checkpoint.key")


def _private_to_the_proxy(deployment: Deployment, key: Path) -> None:
    """Owned by the proxy's user, 0600, and neither the agent's nor the broker's user can
    read it."""
    mode = key.stat()
    assert pwd.getpwuid(mode.st_uid).pw_name == PROXY and stat.S_IMODE(mode.st_mode) == 0o600
    for user in (AGENT, BROKER):
        read = deployment.run(user, "cat", str(key), check=False)
        assert read.returncode != 0 and "Permission denied" in read.stderr, (user, read)
