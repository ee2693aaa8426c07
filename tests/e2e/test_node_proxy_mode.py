"""Node through `blindkey run`, told nothing but what `run` puts in its environment: a real
Node process holding a placeholder calls a TLS upstream (trustme) through proxy mode; the
upstream sees the value, Node sees only [REDACTED:GITHUB_TOKEN].

Node 20's fetch does not read HTTPS_PROXY (NODE_USE_ENV_PROXY and --use-env-proxy arrive in
later Node releases; `run` sets the variable for them). What works on Node 20, each tested
here: undici's EnvHttpProxyAgent (npm `undici`) as fetch's global dispatcher, and the https
module over a CONNECT tunnel, as https-proxy-agent and global-agent make one. NODE_EXTRA_CA_CERTS
is what makes Node trust blindkey's CA in both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from tests.cli.test_run_proxy_mode import Setup, blindkey, setup
from tests.proxy.conftest import SECRET
from tests.upstream import HITS

__all__ = ["setup"]  # the fixture, shared with the other `run` tests

CLIENT = Path(__file__).with_name("node_proxy_client.js")
# npm's undici, in the venv (kept between runs): the registry is reached once per machine.
UNDICI = "undici@6"
NODE_MODULES = Path(sys.prefix) / "node" / "node_modules"


@pytest.fixture(scope="session")
def node_path() -> str:
    """Where Node finds `undici`: installed from npm on first use, then reused."""
    if not (NODE_MODULES / "undici" / "package.json").exists():
        staging = Path(tempfile.mkdtemp(prefix="undici-", dir=sys.prefix))
        try:
            subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(staging), UNDICI],
                check=True, capture_output=True, timeout=50,
            )  # fmt: skip
            NODE_MODULES.parent.mkdir(exist_ok=True)
            # One rename: a run that stops half way leaves no half-installed module here.
            if not NODE_MODULES.exists():
                os.rename(staging / "node_modules", NODE_MODULES)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(NODE_MODULES)


@pytest.mark.parametrize("mode", ["fetch", "https"])
async def test_node_holding_a_placeholder_reaches_the_value(
    setup: Setup, node_path: str, mode: str
) -> None:
    status, out, err = await blindkey(
        setup.home, "run", "--agent", "node", "--secret", "GITHUB_TOKEN", "--",
        "node", str(CLIENT), mode, extra={"URL": setup.url, "NODE_PATH": node_path},
    )  # fmt: skip
    assert status == 0, err
    _, path, headers = setup.upstream.app[HITS][-1]
    assert path == "/echo" and headers["Authorization"] == f"Bearer {SECRET}"
    echoed = orjson.loads(out)
    assert dict(echoed["headers"])["Authorization"] == "Bearer [REDACTED:GITHUB_TOKEN]"
    assert SECRET not in out + err


async def test_node_is_given_the_ca_and_the_proxy_variable_of_newer_releases(
    setup: Setup,
) -> None:
    """NODE_EXTRA_CA_CERTS names blindkey's CA (Node adds it to its own store; the bundle
    would duplicate the system's); NODE_USE_ENV_PROXY=1 makes newer Node's fetch and https
    honour HTTPS_PROXY, and Node 20 ignores it."""
    show = (
        "const e = process.env; console.log(JSON.stringify([e.NODE_USE_ENV_PROXY,"
        " require('fs').readFileSync(e.NODE_EXTRA_CA_CERTS, 'utf8')]))"
    )
    status, out, err = await blindkey(setup.home, "run", "--", "node", "-e", show)
    assert status == 0, err
    use_env_proxy, pem = orjson.loads(out)
    assert use_env_proxy == "1" and pem == setup.home.ca_cert.read_text()
