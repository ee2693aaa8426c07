"""The home every command and the broker make where it is missing: its directories, a
default config.toml and the vault's key. Nothing is imported or written when they exist:
no start pays for the config template and the cipher's imports (0.05 s)."""

from __future__ import annotations

import contextlib

from blindkey.config.paths import Paths, ensure_dirs


def ensure_home(paths: Paths, backend: str = "file") -> bool:
    """Make what is missing; whether config.toml was created."""
    ensure_dirs(paths)
    if paths.config_file.exists() and paths.vault_key.exists():
        return False
    from blindkey.broker.vault import VaultError, ensure_key
    from blindkey.config.home import init_config

    created = init_config(paths, backend)
    # A vault whose key is gone is reported by the commands that open it; the others
    # (proxy status, stop, logs, the audit) must still work, or nothing could stop a proxy.
    with contextlib.suppress(VaultError):
        ensure_key(paths)
    return created
