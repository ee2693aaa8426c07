"""Where the broker's socket may live, and who may open it.

A broker spawned by the proxy serves one user: a private 0700 directory, a 0600 socket.
A broker run as its own service serves other users too (`[broker] allowed_uids`): the
socket is 0660, so the proxy's user must be in the broker's group, and the kernel already
refuses everyone else at connect(); the peer uid check then refuses group members who
are not listed.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import ensure_dir

log = logging.getLogger("blindkey.broker")


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


def peer_credentials(sock: Any) -> tuple[int, int]:
    """(pid, uid) of the process at the other end; pid 0 where the system does not say."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        return int(pid), int(uid)
    # macOS and the BSDs: LOCAL_PEERCRED (level 0, option 1) returns struct xucred.
    creds = sock.getsockopt(0, 1, struct.calcsize("2I"))
    return 0, int(struct.unpack("2I", creds)[1])


@dataclass(frozen=True)
class ConnectionLimits:
    """What one peer may hold of the broker's connections (and so of its descriptors).

    Every exec, env and mcp call of every user opens a connection; a peer that opened
    connections and kept them used to exhaust the broker's descriptors, and then nobody's
    call got through. A process may hold `per_pid`, a user `per_uid`; a connection that
    says nothing for `idle_timeout` is closed, unless it is a proxy's (it caches answers
    and waits for pushes) or an env command's (open while the command runs).
    """

    per_pid: int = 32
    per_uid: int = 256
    idle_timeout: float = 60.0


class PeerCounts:
    """Connections held per process and per user, against ConnectionLimits."""

    def __init__(self) -> None:
        self.by_pid: Counter[int] = Counter()
        self.by_uid: Counter[int] = Counter()
        self.refused = 0

    def admit(self, limits: ConnectionLimits, pid: int, uid: int) -> bool:
        """Count a new connection in, or refuse it (False) when its peer holds its share."""
        over_pid = pid > 0 and self.by_pid[pid] >= limits.per_pid
        if over_pid or self.by_uid[uid] >= limits.per_uid:
            self.refused += 1
            if self.refused & (self.refused - 1) == 0:  # 1, 2, 4, 8...: no flood of lines
                log.warning(
                    "refused broker connection from pid %d uid %d: it holds its share (%d per "
                    "process, %d per user); %d refused so far",
                    pid,
                    uid,
                    limits.per_pid,
                    limits.per_uid,
                    self.refused,
                )
            return False
        self.by_uid[uid] += 1
        if pid > 0:
            self.by_pid[pid] += 1
        return True

    def give_back(self, pid: int, uid: int) -> None:
        for counter, key in ((self.by_pid, pid), (self.by_uid, uid)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
