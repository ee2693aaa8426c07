"""The one way a recorded field reaches a person's screen: with its control characters
shown, never obeyed.

Audit fields carry what callers sent (a URL, a method, an agent's header, an MCP tool's
arguments). Printed raw, a CR/LF forges a line of the log, and ANSI escapes recolour,
erase or retitle the terminal of the human reading it. Every printer for people (`proxy
logs`, `audit summary`, `audit report`, `audit export --format csv`, `proxy status`) passes
text through `printable`; JSON output needs nothing, its encoder escapes them already.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def printable(value: object) -> str:
    """`value` as text with every character a terminal would act on written as an escape:
    C0 and C1 controls, DEL, line and paragraph separators, bidirectional overrides and
    other format characters (what str.isprintable rejects, less the plain space)."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


# An event record's own fields: what `proxy logs` and the report show after its name.
_NOT_DETAIL = frozenset({"ts", "event", "seq", "hash", "chain"})


def field_text(value: object) -> str:
    """A field as a person reads it: lists joined by commas, objects as JSON, no reprs."""
    if isinstance(value, list):
        return ",".join(field_text(item) for item in value)
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def event_detail(record: Mapping[str, object]) -> str:
    """`key=value` for each field of an event record that says something (not yet escaped)."""
    return "  ".join(
        f"{key}={field_text(value)}"
        for key, value in record.items()
        if key not in _NOT_DETAIL and value not in (None, [], "")
    )


# What JSON may carry raw but a terminal may obey (C1 controls: 0x9b is an 8-bit CSI) or
# draw misleadingly (separators, bidirectional overrides): JSON for people's screens gets
# them as \u escapes, the same data to any parser.
_JSON_INERT = {
    code: f"\\u{code:04x}"
    for code in (
        *range(0x80, 0xA0),
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}


def inert_json(text: str) -> str:
    """JSON text (as orjson writes it: C0 controls escaped already) safe to print."""
    return text.translate(_JSON_INERT)
