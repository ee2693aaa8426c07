"""Creating a blindkey home: directories 0700, the default config.toml."""

from __future__ import annotations

from config.atomic import write_atomic
from config.paths import Paths, ensure_dirs
from config.settings import DEFAULT_CONFIG


def init_config(paths: Paths, backend: str = "file") -> bool:
    """Create what is missing; return True if config.toml was written now."""
    ensure_dirs(paths)
    if paths.config_file.exists():
        return False
    text = DEFAULT_CONFIG.replace('kind = "file"', f'kind = "{backend}"')
    write_atomic(paths.config_file, text.encode("utf-8"))
    return True
