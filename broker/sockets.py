"""Where the broker's socket may live, and who may open it.

A broker spawned by the proxy serves one user: a private 0700 directory, a 0600 socket.
A broker run as its own service serves other users too (`[broker] allowed_uids`): the
socket is 0660, so the proxy's user must be in the broker's group, and the kernel already
refuses everyone else at connect(); the peer uid check then refuses group members who
are not listed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import ensure_dir


def socket_mode(shared: bool) -> int:
    return 0o660 if shared else 0o600


def prepare_socket_dir(directory: Path, *, shared: bool) -> None:
    if not shared:
        ensure_dir(directory)
        return
    if not directory.exists():
        directory.mkdir(mode=0o750, parents=True)
        os.chmod(directory, 0o750)  # noqa: S103 - the broker's group must reach the socket
    st = directory.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise BlindkeyError(f"{directory}: not a directory; the broker socket needs one")
    if st.st_uid not in (os.getuid(), 0):
        raise BlindkeyError(
            f"{directory} belongs to uid {st.st_uid}: the broker's socket directory must be "
            f"owned by the broker's user (uid {os.getuid()}) or root"
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise BlindkeyError(
            f"{directory} is writable by other users, who could replace the socket; "
            f"`chmod go-w {directory}`"
        )
