"""System users for the tests that run blindkey apart from root (the hardened deployment).

Users the tests create are removed again; users that were already there are left as found.
"""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from blindkey.config.atomic import locked

# One lock for the whole machine: two `make test` runs at once must not create, use and
# delete the same system users (or system units) under each other.
MACHINE_LOCK = "/tmp/blindkey-tests-machine.lock"


def machine_lock() -> AbstractContextManager[None]:
    """Hold the machine-wide lock for the block; a concurrent run waits its turn."""
    return locked(Path(MACHINE_LOCK))


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def system_users(*users: tuple[str, tuple[str, ...]]) -> Iterator[None]:
    """Make each (name, supplementary groups) exist for the block; remove the ones made here.

    Groups are added in order, so a user may join the group of a user listed before it.
    """
    created: list[str] = []
    with machine_lock():
        yield from _made(users, created)


def _made(users: tuple[tuple[str, tuple[str, ...]], ...], created: list[str]) -> Iterator[None]:
    try:
        for name, groups in users:
            if not _exists(name):
                subprocess.run(
                    ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                     "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                    check=True, capture_output=True,
                )  # fmt: skip
                created.append(name)
            for group in groups:
                subprocess.run(["usermod", "--append", "--groups", group, name], check=True)
        yield
    finally:
        # Members first: a user's own group cannot go while it is another's supplementary.
        for name in reversed(created):
            subprocess.run(["userdel", name], check=False, capture_output=True)
            subprocess.run(["groupdel", name], check=False, capture_output=True)
