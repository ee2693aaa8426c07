"""Creating a blindkey home: directories 0700, the default config.toml."""

from __future__ import annotations

import json
import os

from blindkey.config.atomic import write_atomic
from blindkey.config.paths import Paths, ensure_dirs
from blindkey.config.template import DEFAULT_CONFIG

# Where the bao and vault CLIs look when nothing else is said.
DEFAULT_BAO_ADDRESS = "https://127.0.0.1:8200"


def backend_lines(backend: str) -> str:
    if backend != "openbao":
        return f'kind = "{backend}"'
    address = os.environ.get("BAO_ADDR") or os.environ.get("VAULT_ADDR") or DEFAULT_BAO_ADDRESS
    return (
        'kind = "openbao"\n'
        f"address = {json.dumps(address)}  # the token: BAO_TOKEN, VAULT_TOKEN or token_file\n"
        'mount = "secret"\n'
        'prefix = "blindkey"\n'
        'auth = "token"'
    )


def init_config(paths: Paths, backend: str = "file") -> bool:
    """Create what is missing; return True if config.toml was written now."""
    ensure_dirs(paths)
    if paths.config_file.exists():
        return False
    text = DEFAULT_CONFIG.replace('kind = "file"', backend_lines(backend), 1)
    write_atomic(paths.config_file, text.encode("utf-8"))
    return True
