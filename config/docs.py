"""docs/configuration.md, written from the declared keys (the same ones the loader reads).

`python -m blindkey.config.docs docs/configuration.md` rewrites it; without a path the text
goes to stdout. tests/config/test_declared_once.py fails while the committed file differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from blindkey.config.fields import Key, Section, keys, sections
from blindkey.config.model import Settings
from blindkey.config.template import DEFAULT_CONFIG

REGENERATE = "python -m blindkey.config.docs docs/configuration.md"
_INTRO = f"""\
# config.toml

<!-- Generated from the keys declared in config/model.py and config/stores.py by
`{REGENERATE}`: edit those, not this file. -->

blindkey reads `config.toml` in its home (`$BLINDKEY_HOME`, else `$XDG_CONFIG_HOME/blindkey/`).
Every key may be left out and then has its default; a table or key blindkey does not know is
refused with the nearest known name. `blindkey config check` validates a file,
`blindkey allowlist ...`, `blindkey secrets set ...` and `blindkey route add ...` edit it.
"""


def _cell(text: str) -> str:
    # A bare `<env>` would be read as an HTML tag and vanish from the rendered page.
    return text.replace("|", "\\|").replace("<", "\\<")


def _row(key: Key) -> str:
    default = "required" if key.required else f"`{key.shown(key.default)}`"
    cells = (f"`{key.name}`", key.kind.name, default, key.meaning)
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _about(section: Section) -> list[str]:
    said = [section.comment] if section.comment else []
    said += [" ".join(section.notes)] if section.notes else []
    if section.named:
        said.append(f"One table per name, e.g. `[{section.name}.{section.example_name}]`")
    return [" ".join(_sentence(text) for text in said), ""] if said else []


def _section(section: Section) -> list[str]:
    title = f"[{section.name}.NAME]" if section.named else f"[{section.name}]"
    optional = " (optional)" if section.optional else ""
    lines = [f"## {title}{optional}", "", *_about(section)]
    lines += ["| key | value | default | meaning |", "|---|---|---|---|"]
    lines += [_row(key) for key in keys(section.model)]
    return [*lines, ""]


def configuration_markdown() -> str:
    lines = [_INTRO]
    for section in sections(Settings):
        lines += _section(section)
    lines += ["## The file `blindkey init` writes", "", "```toml", DEFAULT_CONFIG.rstrip("\n")]
    lines += ["```", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = configuration_markdown()
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
