"""Reading config.toml into the settings model, with errors that name file, table and key.

No key is listed here: each table is read by the keys its model declares (config/fields.py).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from blindkey.config.errors import ConfigError
from blindkey.config.fields import Invalid, Key, Section, check, keys, sections
from blindkey.config.hosts import HostError
from blindkey.config.model import Settings
from blindkey.config.stores import OPENBAO_KEYS, BackendSettings, OpenBaoSettings

# Spelled here too for the callers that read one value the way the file would.
from blindkey.config.values import parse_duration as parse_duration
from blindkey.config.values import parse_size as parse_size

T = TypeVar("T")
_SECTIONS = sections(Settings)


class _Table:
    """Reads one table, remembering which keys were used so unknown ones are reported."""

    def __init__(self, file: Path, name: str, table: object) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [{name}] must be a table")
        self.file, self.name, self.table = file, name, table
        self.known: list[str] = []
        # [audit.ship] is read as a table of its own, not as a key of [audit].
        self.inner = {s.name.split(".", 1)[1] for s in _SECTIONS if s.name.startswith(name + ".")}

    def where(self, key: str = "") -> str:
        return f"{self.file}: [{self.name}] {key}: " if key else f"{self.file}: [{self.name}] "

    def get(self, key: Key) -> Any:
        self.known.append(key.name)
        if key.name not in self.table:
            return key.default
        try:
            return key.kind.parse(self.table[key.name])
        except (ValueError, TypeError, HostError) as exc:
            raise ConfigError(f"{self.where(key.name)}{exc}") from exc

    def read(self, model: type) -> dict[str, Any]:
        """The model's keys as its constructor's arguments."""
        return {key.attr: self.get(key) for key in keys(model)}

    def finish(self) -> None:
        for key in self.table:
            if key not in self.known and key not in self.inner:
                hint = difflib.get_close_matches(key, self.known, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(
                    f"{self.file}: [{self.name}] unknown key {key!r}{suggestion}; "
                    f"known keys: {', '.join(self.known)}"
                )

    def checked(self, value: T) -> T:
        try:
            return check(value)
        except Invalid as exc:
            raise ConfigError(f"{self.where(exc.key)}{exc}") from exc


def _model(file: Path, name: str, model: type[T], table: object) -> T:
    reader = _Table(file, name, table)
    value = model(**reader.read(model))
    reader.finish()
    return reader.checked(value)


def _openbao(reader: _Table, *, required: bool) -> OpenBaoSettings | None:
    """The OpenBao keys of [backend] or [remote]; None when no address is given."""
    settings = OpenBaoSettings(**reader.read(OpenBaoSettings))
    if not settings.address:
        given = [key for key in OPENBAO_KEYS if key in reader.table]
        if required or given:
            raise ConfigError(
                f'{reader.where("address")}required (e.g. "https://bao.example.com:8200")'
            )
        return None
    return reader.checked(settings)


def _backend(file: Path, table: object) -> BackendSettings:
    reader = _Table(file, "backend", table)
    backend = BackendSettings(**reader.read(BackendSettings))
    if backend.kind == "openbao":
        backend = BackendSettings(backend.kind, backend.cache_ttl, _openbao(reader, required=True))
    else:
        stray = [key for key in OPENBAO_KEYS if key in reader.table]
        if stray:
            raise ConfigError(
                f'{reader.where(stray[0])}only used with kind = "openbao" '
                "(a team store for push and pull goes under [remote])"
            )
    reader.finish()
    return backend


def _remote(file: Path, table: object) -> OpenBaoSettings | None:
    reader = _Table(file, "remote", table)
    remote = _openbao(reader, required=False)
    reader.finish()
    return remote


def _named(file: Path, section: Section, tables: object) -> dict[str, Any]:
    """[secrets.NAME] and the like: one table of the section's model per name."""
    if not isinstance(tables, dict):
        raise ConfigError(
            f"{file}: [{section.name}] must be a table of [{section.name}.NAME] tables"
        )
    found: dict[str, Any] = {}
    for name, table in tables.items():
        if section.names is not None and not section.names.match(name):
            raise ConfigError(f"{file}: [{section.name}.{name}] {section.bad_name}")
        found[name] = _model(file, f"{section.name}.{name}", section.model, table)
    return found


def _section(file: Path, section: Section, data: Mapping[str, Any]) -> Any:
    if section.named:
        return _named(file, section, data.get(section.name, {}))
    table: Any = data
    for part in section.name.split("."):  # [audit.ship]: data["audit"]["ship"]
        table = table.get(part, {}) if isinstance(table, dict) else {}
    if section.model is BackendSettings:
        return _backend(file, table)
    if section.model is OpenBaoSettings:
        return _remote(file, table)
    return _model(file, section.name, section.model, table)


def parse_settings(file: Path, data: Mapping[str, Any]) -> Settings:
    names = [section.name for section in _SECTIONS if "." not in section.name]
    for key in data:
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            suggestion = f" (did you mean [{hint[0]}]?)" if hint else ""
            raise ConfigError(f"{file}: unknown section [{key}]{suggestion}")
    return Settings(**{section.attr: _section(file, section, data) for section in _SECTIONS})


def read_config_text(file: Path) -> str:
    """The file's text, or ConfigError saying why it cannot be had."""
    try:
        raw = file.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: no such file; run `blindkey init` to create it") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text") from exc


def load_settings(file: Path) -> Settings:
    text = read_config_text(file)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
    return parse_settings(file, data)
