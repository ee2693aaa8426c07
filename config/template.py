"""The config.toml that `blindkey init` writes, rendered from the declared keys.

No key, default or comment is written here: each comes from the field that declares it
(config/model.py, config/stores.py), so the file a user starts from always says what
blindkey does when a key is left out, and a key added to a model appears in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from blindkey.config.fields import Key, Section, keys, sections
from blindkey.config.model import Settings
from blindkey.config.stores import BackendSettings, OpenBaoSettings

# Spelled here too for the callers that write one value the way the template does.
from blindkey.config.values import toml_duration as toml_duration
from blindkey.config.values import toml_size as toml_size

COMMENT_COLUMN = 34
BANNER = (
    "# blindkey configuration. `blindkey config check` validates this file;",
    "# `blindkey allowlist ...` and `blindkey secrets set ...` edit it for you.",
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def _commented(text: str, comment: str) -> list[str]:
    """`text`, then `comment` from the comment column; a comment's further lines under it."""
    if not comment:
        return [text]
    first, *more = comment.split("\n")
    return [f"{text:<{COMMENT_COLUMN - 1}} # {first}"] + [
        f"{'':<{COMMENT_COLUMN}}# {rest}" for rest in more
    ]


def _keys(model: type, value: Any, *, example: bool = False) -> list[str]:
    """The key lines of one table: its values, or (example) a commented-out sample."""
    lines: list[str] = []
    for key in keys(model):
        shown = key.sample() if example else key.shown(getattr(value, key.attr))
        prefix = "# " if example else ""
        lines += _commented(f"{prefix}{key.name} = {shown}", key.comment)
    return lines


def _header(section: Section, name: str = "", *, example: bool = False) -> list[str]:
    title = f"{'# ' if example else ''}[{section.name}{'.' + name if name else ''}]"
    return _commented(title, section.comment) + [f"# {note}" for note in section.notes]


def _table_name(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _named(section: Section, tables: Mapping[str, Any]) -> list[str]:
    """[secrets.NAME]-style tables; with none, the section's commented-out example."""
    if not tables:
        example = _header(section, section.example_name, example=True)
        return example + _keys(section.model, None, example=True)
    lines: list[str] = []
    for name, value in tables.items():
        if lines:
            lines.append("")
        lines += _commented(f"[{section.name}.{_table_name(name)}]", "")
        lines += _keys(section.model, value)
    return lines


def _section(section: Section, value: Any) -> list[str]:
    if section.named:
        return _named(section, value)
    if value is None:  # an optional table the settings leave out: shown as an example
        return _header(section, example=True) + _keys(section.model, None, example=True)
    lines = _header(section) + _keys(section.model, value)
    if isinstance(value, BackendSettings) and value.openbao is not None:
        lines += _keys(OpenBaoSettings, value.openbao)
    return lines


def render(settings: Settings) -> str:
    """config.toml for `settings`: every declared key, each with its comment."""
    lines = list(BANNER)
    for section in sections(Settings):
        lines.append("")
        lines += _section(section, getattr(settings, section.attr))
    return "\n".join(lines) + "\n"


def declared_keys() -> dict[str, tuple[Key, ...]]:
    """Each table of config.toml and the keys it takes (for tests and docs)."""
    return {section.name: keys(section.model) for section in sections(Settings)}


DEFAULT_CONFIG = render(Settings())
