"""The flat exception set every blindkey package raises from."""

from __future__ import annotations

import sys
from collections.abc import Callable


class BlindkeyError(Exception):
    """An expected failure: the CLI prints it as one line and exits 1."""


class ConfigError(BlindkeyError):
    """The configuration file is missing, unreadable or invalid."""


class UsageError(BlindkeyError):
    """The command line asks for something that cannot be done (exit 2)."""


USAGE_STATUS = 2  # a command line that asks for what cannot be done


def reported(command: Callable[[], int]) -> int:
    """Run a command of a `blindkey` entry point: its exit status, or one line on stderr
    for what stopped it (a usage error 2, any other BlindkeyError or OSError 1, Ctrl-C 130)."""
    try:
        return int(command())
    except UsageError as exc:
        sys.stderr.write(f"blindkey: {exc}\n")
        return USAGE_STATUS
    except BlindkeyError as exc:
        sys.stderr.write(f"blindkey: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"blindkey: {exc.strerror or exc}{where}\n")
        return 1
