"""The flat exception set every blindkey package raises from."""

from __future__ import annotations


class BlindkeyError(Exception):
    """An expected failure: the CLI prints it as one line and exits 1."""


class ConfigError(BlindkeyError):
    """The configuration file is missing, unreadable or invalid."""


class UsageError(BlindkeyError):
    """The command line asks for something that cannot be done (exit 2)."""
