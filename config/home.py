"""Creating a blindkey home: directories 0700, the default config.toml."""

from __future__ import annotations

import os

from blindkey.config.atomic import write_atomic
from blindkey.config.fields import keys
from blindkey.config.paths import Paths, ensure_dirs
from blindkey.config.stores import OpenBaoSettings
from blindkey.config.template import DEFAULT_CONFIG

# Where the bao and vault CLIs look when nothing else is said.
DEFAULT_BAO_ADDRESS = "https://127.0.0.1:8200"


def backend_lines(backend: str) -> str:
    if backend != "openbao":
        return f'kind = "{backend}"'
    address = os.environ.get("BAO_ADDR") or os.environ.get("VAULT_ADDR") or DEFAULT_BAO_ADDRESS
    store = OpenBaoSettings(address=address)
    shown = {key.name: key.shown(getattr(store, key.attr)) for key in keys(OpenBaoSettings)}
    lines = [
        'kind = "openbao"',
        f"address = {shown['address']}  # the token: BAO_TOKEN, VAULT_TOKEN or token_file",
    ]
    # The keys a first OpenBao store is most often changed in, at their declared defaults.
    return "\n".join(lines + [f"{name} = {shown[name]}" for name in ("mount", "prefix", "auth")])


def init_config(paths: Paths, backend: str = "file") -> bool:
    """Create what is missing; return True if config.toml was written now."""
    ensure_dirs(paths)
    if paths.config_file.exists():
        return False
    text = DEFAULT_CONFIG.replace('kind = "file"', backend_lines(backend), 1)
    write_atomic(paths.config_file, text.encode("utf-8"))
    return True
