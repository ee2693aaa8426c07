"""Declaring a config key once: the model's field carries its parser, default and comment.

`setting(...)` is a dataclass field whose metadata is a `Key`; a field of `Settings` whose
metadata is `table(...)` or `named_tables(...)` is a TOML table and the model of its keys.
The loader, the template, CLI edits and docs/configuration.md all iterate these, so a key
added to a model is read, written and documented without a second list to keep in step.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from blindkey.config.values import Kind

T = TypeVar("T")
_KEY = "blindkey.key"
_SECTION = "blindkey.section"


class Invalid(ValueError):
    """Keys that each parse but do not fit together; `key` names the one to fix ("" for none)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Key:
    kind: Kind[Any]
    # Written after the value in the template (a "\n" starts a continuation comment line)
    # and, unless `doc` says more, in docs/configuration.md.
    comment: str = ""
    doc: str = ""
    # What the template shows where no default says it better (commented-out tables).
    example: Any = None
    # Needed for the table to make sense; the model's check says so when it is missing.
    required: bool = False
    name: str = ""  # the TOML key; filled from the attribute's name when not given
    attr: str = ""
    default: Any = None

    @property
    def meaning(self) -> str:
        return self.doc or self.comment.replace("\n", " ")

    def shown(self, value: Any) -> str:
        return self.kind.show(value)

    def sample(self) -> str:
        """The value a commented-out example table shows for this key."""
        value = self.default if self.example is None else self.kind.parse(self.example)
        return self.kind.show(value)


def setting(
    kind: Kind[T],
    default: T,
    comment: str = "",
    *,
    doc: str = "",
    example: Any = None,
    required: bool = False,
    key: str = "",
) -> T:
    declared = Key(kind, comment, doc, example, required, key)
    return dataclasses.field(default=default, metadata={_KEY: declared})


@functools.cache
def keys(model: type) -> tuple[Key, ...]:
    """The declared keys of a model, in declaration order (fields without a Key are not keys)."""
    found = []
    for item in dataclasses.fields(model):
        declared = item.metadata.get(_KEY)
        if isinstance(declared, Key):
            name = declared.name or item.name
            found.append(
                dataclasses.replace(declared, name=name, attr=item.name, default=item.default)
            )
    return tuple(found)


def check(value: T) -> T:
    """A model whose keys must fit together has `checked()`: it raises Invalid, or returns
    the value as it is kept (normalised)."""
    method = cast(Callable[[], T] | None, getattr(value, "checked", None))
    return value if method is None else method()


@dataclass(frozen=True)
class Section:
    """One TOML table of config.toml and the model whose fields are its keys."""

    name: str
    model: type
    comment: str = ""  # after the [name] header
    notes: tuple[str, ...] = ()  # comment lines under the header
    # [remote]: None unless the file has it; the template shows it commented out.
    optional: bool = False
    # [secrets.NAME]: one table per name; the template shows `example_name`, commented out.
    example_name: str = ""
    names: re.Pattern[str] | None = None
    bad_name: str = ""
    attr: str = ""

    @property
    def named(self) -> bool:
        return bool(self.example_name)


def table(
    name: str,
    model: type | None = None,
    *,
    comment: str = "",
    notes: tuple[str, ...] = (),
    optional: bool = False,
) -> dict[str, Section]:
    """The metadata of a Settings field read from table [name]; `model` defaults to the
    field's default_factory."""
    return {_SECTION: Section(name, model or object, comment, notes, optional)}


def named_tables(
    name: str,
    model: type,
    example_name: str,
    *,
    names: re.Pattern[str],
    bad_name: str,
    comment: str,
) -> dict[str, Section]:
    """The metadata of a Settings field read from one [name.NAME] table per name."""
    declared = Section(
        name, model, comment, example_name=example_name, names=names, bad_name=bad_name
    )
    return {_SECTION: declared}


@functools.cache
def sections(settings: type) -> tuple[Section, ...]:
    """The tables of config.toml in the order the template writes them."""
    found = []
    for item in dataclasses.fields(settings):
        declared = item.metadata.get(_SECTION)
        if isinstance(declared, Section):
            model = declared.model
            if model is object:
                model = cast(type, item.default_factory)
            found.append(dataclasses.replace(declared, model=model, attr=item.name))
    return tuple(found)
