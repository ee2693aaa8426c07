"""Where blindkey keeps its files: BLINDKEY_HOME, or the XDG directories."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from blindkey.config.errors import BlindkeyError

# sun_path holds 108 bytes on Linux and 104 on macOS; stay under both.
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    runtime_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def vault_file(self) -> Path:
        return self.state_dir / "vault.bin"

    @property
    def vault_key(self) -> Path:
        return self.state_dir / "vault.key"

    @property
    def ca_key(self) -> Path:
        """Proxy mode's CA key: the proxy's user's only (0600)."""
        return self.state_dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.state_dir / "ca.pem"

    @property
    def agents_file(self) -> Path:
        return self.state_dir / "agents.json"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "state.lock"

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    @property
    def proxy_log(self) -> Path:
        return self.state_dir / "proxy.log"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "proxy.pid"

    @property
    def status_file(self) -> Path:
        return self.runtime_dir / "status.json"

    @property
    def broker_socket(self) -> Path:
        path = self.runtime_dir / "broker.sock"
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        # A deep home would overflow sun_path: use a short per-home directory instead.
        digest = hashlib.sha256(os.fsencode(self.runtime_dir)).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"blindkey-{os.getuid()}-{digest}"
        return short / "broker.sock"

    def broker_socket_at(self, configured: str) -> Path:
        """`[broker] socket` when set (a broker run as its own service), else our own."""
        return Path(configured) if configured else self.broker_socket

    def all_dirs(self) -> tuple[Path, ...]:
        return (
            self.config_dir,
            self.state_dir,
            self.audit_dir,
            self.runtime_dir,
            self.broker_socket.parent,
        )


def resolve_paths(environ: Mapping[str, str] | None = None) -> Paths:
    env = os.environ if environ is None else environ
    home_override = env.get("BLINDKEY_HOME")
    if home_override:
        home = Path(home_override).expanduser().absolute()
        return Paths(config_dir=home, state_dir=home, runtime_dir=home / "run")
    user_home = Path(env.get("HOME") or Path.home())
    if sys.platform == "darwin":
        base = user_home / "Library" / "Application Support" / "blindkey"
        return Paths(config_dir=base, state_dir=base, runtime_dir=base / "run")
    config = Path(env.get("XDG_CONFIG_HOME") or user_home / ".config") / "blindkey"
    state = Path(env.get("XDG_STATE_HOME") or user_home / ".local" / "state") / "blindkey"
    runtime_base = env.get("XDG_RUNTIME_DIR")
    runtime = Path(runtime_base) / "blindkey" if runtime_base else state / "run"
    return Paths(config_dir=config, state_dir=state, runtime_dir=runtime)


def ensure_dir(path: Path) -> None:
    """Create a private directory (0700), tightening one that already exists.

    A directory someone else owns, or a symlink, is refused: in a shared /tmp another
    user could otherwise prepare blindkey's socket directory in advance.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
        raise BlindkeyError(
            f"{path} is not a directory owned by you (uid {os.getuid()}); remove it and retry"
        )
    if st.st_mode & 0o077:
        path.chmod(0o700)


def ensure_dirs(paths: Paths) -> None:
    for directory in paths.all_dirs():
        ensure_dir(directory)
