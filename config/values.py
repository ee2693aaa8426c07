"""What a config value may be: each kind's parser, its TOML spelling and its name in the docs.

A kind is the one place a type of value is described: the loader parses with it, the
template writes defaults with it, and docs/configuration.md names it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Item = TypeVar("Item")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 1024,
    "MiB": 2**20,
    "GiB": 2**30,
}


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "30s", "500ms" or "2m"')
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f'expected a duration such as "30s", "500ms" or "2m", got {value!r}')
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds):  # TOML's nan and inf
        raise ValueError(f"expected a finite duration, got {value!r}")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return seconds


def parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError('expected a size such as "10MiB"')
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f'expected a size such as "10MiB" or "512KiB", got {value!r}')
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]
    if size <= 0:
        raise ValueError("a size must be greater than zero")
    return size


def toml_duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f'"{int(seconds // size)}{unit}"'
    return f'"{round(seconds * 1000)}ms"'


def toml_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f'"{size // scale}{unit}"'
    return str(size)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


@dataclass(frozen=True)
class Kind(Generic[T]):
    """A type of config value: how it is read, how the template writes it, what docs call it."""

    parse: Callable[[Any], T]
    show: Callable[[T], str]
    name: str


def typed(kind: type, label: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"expected {label}, got {value!r}")
        return value

    return convert


def text(label: str = "a string") -> Kind[str]:
    """A string; `label` is how a wrong value's message names what was expected."""
    return Kind(typed(str, label), toml_value, "string")


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise ValueError(f"expected a port number from 0 to 65535, got {value!r}")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return convert


def choice(choices: tuple[str, ...]) -> Kind[str]:
    return Kind(one_of(choices), toml_value, " | ".join(f"`{c}`" for c in choices))


def string_list(
    item: Callable[[str], Item], show: Callable[[Item], str] = str, name: str = "list of strings"
) -> Kind[tuple[Item, ...]]:
    """A TOML array of strings, each read by `item` and written back by `show`."""

    def convert(value: Any) -> tuple[Item, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(item(v) for v in value)

    return Kind(convert, lambda items: toml_value([show(i) for i in items]), name)


BOOL: Kind[bool] = Kind(typed(bool, "true or false"), toml_value, "`true` | `false`")
PORT: Kind[int] = Kind(_port, str, "port number (0-65535)")
POSITIVE: Kind[int] = Kind(_positive_int, str, "positive integer")
DURATION: Kind[float] = Kind(
    parse_duration, toml_duration, 'duration (`"500ms"`, `"30s"`, `"2m"`, `"1h"`)'
)
SIZE: Kind[int] = Kind(parse_size, toml_size, 'size (bytes, `"512KiB"`, `"10MiB"`, `"1GB"`)')
NETWORKS = string_list(ipaddress.ip_network, name="list of CIDRs")
STRINGS = string_list(str)
