"""What `blindkey run` gives a command so that it uses the proxy without knowing it: the
proxy variables (with the agent's token as the proxy credentials), the CA variables every
common client reads, and placeholders where the command expects keys."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from blindkey.config.errors import UsageError
from blindkey.proxy.tls.ca import Authority, bundle

NO_PROXY = "localhost,127.0.0.1,::1"
# Every client reads one of these for its trusted CAs: OpenSSL (Python's ssl, curl built
# with it, git), requests, curl, git; Node adds NODE_EXTRA_CA_CERTS to its own store.
BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")


def proxy_url(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    if token is None:
        return f"http://{shown}:{port}"
    return f"http://agent:{quote(token, safe='')}@{shown}:{port}"


def secret_variables(specs: list[str], placeholders: Mapping[str, str]) -> dict[str, str]:
    """`--secret NAME[=VAR]`: VAR (NAME by default) holds NAME's placeholder."""
    found: dict[str, str] = {}
    for spec in specs:
        name, _, variable = spec.partition("=")
        variable = variable or name
        if not variable.isidentifier() or not variable.isascii():
            raise UsageError(f"--secret {spec}: {variable!r} is not a variable name")
        if name not in placeholders:
            raise UsageError(
                f"--secret {spec}: no secret {name} in this environment (`blindkey secrets list`)"
            )
        found[variable] = placeholders[name]
    return found


def write_bundles(directory: Path, authority: Authority) -> tuple[Path, Path]:
    """The CA and the bundle (the system's CAs, then blindkey's) in `directory`: a run's
    own copies, readable where `--isolate` hides blindkey's home."""
    ca, trusted = directory / "blindkey-ca.pem", directory / "ca-bundle.pem"
    ca.write_bytes(authority.pem)
    trusted.write_bytes(bundle(authority))
    return ca, trusted


def run_directory() -> Path:
    """A private directory (0700) for one run's CA files, removed when the run ends."""
    return Path(tempfile.mkdtemp(prefix="blindkey-run-"))


def run_environment(
    base: Mapping[str, str], proxy: str, ca: Path, bundle: Path, secrets: Mapping[str, str]
) -> dict[str, str]:
    environment = dict(base)
    for name in PROXY_VARIABLES:
        environment[name] = proxy
    environment["NO_PROXY"] = environment["no_proxy"] = NO_PROXY
    for name in BUNDLE_VARIABLES:
        environment[name] = str(bundle)
    environment["NODE_EXTRA_CA_CERTS"] = str(ca)
    # Node's fetch and https read HTTPS_PROXY only when told to (Node 22.21 and 24.5 on);
    # Node 20 ignores this and needs undici's EnvHttpProxyAgent (docs/agents.md).
    environment["NODE_USE_ENV_PROXY"] = "1"
    environment.update(secrets)
    return environment


def agent_token(base: Mapping[str, str] | None = None) -> str | None:
    token = (os.environ if base is None else base).get("BLINDKEY_AGENT_TOKEN", "").strip()
    return token or None
