"""Edits of config.toml made by the CLI; comments and layout the user wrote are kept."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from blindkey.config.atomic import locked, write_atomic
from blindkey.config.errors import ConfigError
from blindkey.config.fields import sections
from blindkey.config.loader import parse_settings
from blindkey.config.model import Settings

# [secrets.NAME]-style parents: written only inside their tables' headers, never bare.
_NAMED_TABLES = frozenset(section.name for section in sections(Settings) if section.named)


def edit_config(
    file: Path,
    lock: Path,
    change: Callable[[tomlkit.TOMLDocument], None],
    approve: Callable[[str], None] | None = None,
) -> Settings:
    """Apply `change` to the document; the file is replaced only if the result is valid
    and `approve` (given the new text; the broker's consent to a policy change) returns."""
    with locked(lock):
        try:
            document = tomlkit.parse(file.read_text("utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{file}: no such file; run `blindkey init`") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: not UTF-8 text") from exc
        except tomlkit.exceptions.ParseError as exc:
            raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
        if not document.unwrap():
            # An emptied file is a policy lost, not a request for defaults: an edit on top of
            # it would write a file whose every [secrets.*] binding and allowlist is gone.
            raise ConfigError(
                f"{file}: holds no settings (empty, or only comments); blindkey will not "
                "rebuild it from defaults over a policy that may have been lost: restore it, "
                "or move it away and run `blindkey init` for the default file"
            )
        change(document)
        settings = parse_settings(file, document.unwrap())
        text = tomlkit.dumps(document)
        if approve is not None:
            approve(text)
        write_atomic(file, text.encode("utf-8"))
        return settings


def toml_table(document: tomlkit.TOMLDocument, *keys: str) -> Table:
    """The table at `keys`, created (as a real [section]) when missing."""
    current: Any = document
    for key in keys:
        if key not in current:
            current[key] = tomlkit.table(is_super_table=key in _NAMED_TABLES)
        current = current[key]
        if not isinstance(current, Table):
            raise ConfigError(f"[{'.'.join(keys)}] must be a table")
    table_: Table = current
    return table_


def string_array(values: Iterable[str]) -> Any:
    array = tomlkit.array()
    array.extend(values)
    return array
