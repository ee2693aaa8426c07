"""The unit files and the LaunchAgent, generated from code so they always name the blindkey
that wrote them (pipx, uv tool or any venv) and never drift from one another.

Per user: one systemd user unit (the proxy, which spawns its own broker). System-wide: the
broker as a user of its own that owns the vault, the proxy as another user that may open
the broker's socket and nothing else of the broker's. Both are Type=notify with a watchdog.
"""

from __future__ import annotations

import os
import plistlib
import sys
from dataclasses import dataclass
from pathlib import Path

from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

LABEL = "dev.blindkey.proxy"
USER_UNIT = "blindkey.service"
BROKER_UNIT = "blindkey-broker.service"
PROXY_UNIT = "blindkey.service"
# Twice the interval the loop pings at (WATCHDOG_USEC/2): a loop stuck this long is restarted.
WATCHDOG_SEC = 30
# The proxy drains calls for [limits] drain_timeout (10 s by default), then flushes its audit.
STOP_TIMEOUT_SEC = 45
# Descriptors each service may open: the proxy holds up to [limits] max_connections agent
# connections and their upstream ones, the broker a connection per exec, env and mcp call.
# A service manager's default soft limit (1,024) let ~1,100 idle connections stop both.
OPEN_FILES = 65536


@dataclass(frozen=True)
class SystemLayout:
    """Where the two system services live. StateDirectory=/RuntimeDirectory= create these
    at start, owned by the unit's user, so no path has to exist beforehand."""

    broker_user: str = "blindkey-broker"
    proxy_user: str = "blindkey"
    unit_dir: Path = Path("/etc/systemd/system")

    @property
    def broker_home(self) -> Path:
        return Path("/var/lib") / self.broker_user

    @property
    def proxy_home(self) -> Path:
        return Path("/var/lib") / self.proxy_user

    @property
    def socket(self) -> Path:
        return Path("/run") / self.broker_user / "broker.sock"


def blindkey_path(argv0: str | None = None, executable: str | None = None) -> Path:
    """The absolute path of the running blindkey: argv[0] when it is the console script,
    else the console script beside the interpreter (`python -m blindkey.cli`)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    candidates = []
    if Path(argv0).name == "blindkey":
        candidates.append(Path(argv0))
    candidates.append(Path(executable).parent / "blindkey")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    raise BlindkeyError(
        "cannot find the blindkey command beside this Python "
        f"({Path(executable).parent}); install blindkey with pipx, uv tool or pip into a venv"
    )


# Everything systemd-analyze security weighs that blindkey does not need. The proxy needs
# outbound TCP (upstreams), the broker too (OpenBao); both need AF_UNIX for the socket.
_HARDENING = """\
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectSystem=strict
ProtectHome=yes
ProtectProc=invisible
ProcSubset=pid
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
"""


# What a user manager applies without privileges (seccomp, no_new_privs).
_USER_HARDENING = "".join(
    line + "\n"
    for line in _HARDENING.splitlines()
    if line.split("=")[0]
    in {
        "UMask",
        "NoNewPrivileges",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "SystemCallArchitectures",
        "SystemCallFilter",
        "SystemCallErrorNumber",
    }
)


def _notify_service(blindkey: Path) -> str:
    return (
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"WatchdogSec={WATCHDOG_SEC}\n"
        "Restart=on-failure\n"
        "RestartSec=1\n"
        f"TimeoutStopSec={STOP_TIMEOUT_SEC}\n"
        f"LimitNOFILE={OPEN_FILES}\n"
    )


def user_unit(blindkey: Path, paths: Paths) -> str:
    """~/.config/systemd/user/blindkey.service for the home `paths` names.

    The home is pinned in the unit, so the service uses the files the CLI uses whatever
    the user manager's environment is. The sandbox is what an unprivileged user manager
    can apply: seccomp filters and no new privileges. Mount namespacing (ProtectSystem=,
    ProtectHome=, PrivateTmp=, ReadWritePaths=) needs root there: systemd 252 fails such a
    unit with 218/CAPABILITIES, and with PrivateUsers= added, 226/NAMESPACE, as running it
    under a user's manager showed. It would confine little anyway: the agent runs as the
    same user. The confined deployment is `--system`.
    """
    return (
        "# Generated by `blindkey service install`; regenerate rather than edit.\n"
        "[Unit]\n"
        "Description=blindkey: lets AI agents use API keys without seeing them\n"
        "\n"
        "[Service]\n"
        f"{_notify_service(blindkey)}"
        f"ExecStart={blindkey} proxy start --foreground\n"
        f"ExecReload={blindkey} proxy reload\n"
        f"{_home_environment(paths)}"
        f"{_USER_HARDENING}"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


def broker_unit(blindkey: Path, layout: SystemLayout) -> str:
    """The broker, as its own user owning the vault; the proxy's user reaches its socket
    through the socket directory's group (0750) and the socket's mode (0660).

    No PrivateUsers=: in a user namespace of its own the broker would see the proxy's uid
    as `nobody` (SO_PEERCRED maps it) and refuse it, as running the units showed."""
    user = layout.broker_user
    return (
        "# Generated by `blindkey service install --system`; regenerate rather than edit.\n"
        "[Unit]\n"
        "Description=blindkey secret broker: holds the values, answers the proxy's socket\n"
        "Before=blindkey.service\n"
        "\n"
        "[Service]\n"
        f"{_notify_service(blindkey)}"
        f"ExecStart={blindkey} service broker --socket {layout.socket}\n"
        f"User={user}\n"
        f"Group={user}\n"
        f"Environment=BLINDKEY_HOME={layout.broker_home}\n"
        f"StateDirectory={layout.broker_home.name}\n"
        "StateDirectoryMode=0700\n"
        f"RuntimeDirectory={layout.socket.parent.name}\n"
        "RuntimeDirectoryMode=0750\n"
        f"{_HARDENING}"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def proxy_unit(blindkey: Path, layout: SystemLayout) -> str:
    """The proxy, as a user of its own in the broker's group: it reaches the broker's
    socket; the broker's home is out of its sight altogether."""
    user = layout.proxy_user
    return (
        "# Generated by `blindkey service install --system`; regenerate rather than edit.\n"
        "[Unit]\n"
        "Description=blindkey: lets AI agents use API keys without seeing them\n"
        f"Requires={BROKER_UNIT}\n"
        f"After={BROKER_UNIT} network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        f"{_notify_service(blindkey)}"
        f"ExecStart={blindkey} proxy start --foreground\n"
        f"ExecReload={blindkey} proxy reload\n"
        f"User={user}\n"
        f"Group={user}\n"
        f"SupplementaryGroups={layout.broker_user}\n"
        f"Environment=BLINDKEY_HOME={layout.proxy_home}\n"
        f"StateDirectory={layout.proxy_home.name}\n"
        "StateDirectoryMode=0700\n"
        f"InaccessiblePaths=-{layout.broker_home}\n"
        f"{_HARDENING}"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def launch_agent(blindkey: Path, paths: Paths) -> bytes:
    """~/Library/LaunchAgents/dev.blindkey.proxy.plist: started at login, restarted when it
    exits with a failure, its output in the state directory."""
    plist = {
        "Label": LABEL,
        "ProgramArguments": [str(blindkey), "proxy", "start", "--foreground"],
        "EnvironmentVariables": _home_variables(paths),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "ExitTimeOut": STOP_TIMEOUT_SEC,
        "Umask": 0o077,
        "ProcessType": "Background",
        "StandardOutPath": str(paths.state_dir / "launchd.out.log"),
        "StandardErrorPath": str(paths.state_dir / "launchd.err.log"),
    }
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=False)


def _home_variables(paths: Paths) -> dict[str, str]:
    # BLINDKEY_HOME lays config, state and runtime out under one directory; anything else
    # came from the XDG variables (or macOS's fixed place), pinned as they were at install.
    if paths.state_dir == paths.config_dir and paths.runtime_dir == paths.config_dir / "run":
        return {"BLINDKEY_HOME": str(paths.config_dir)}
    # $XDG_RUNTIME_DIR is the service manager's own (/run/user/UID), as in a login.
    return {
        "XDG_CONFIG_HOME": str(paths.config_dir.parent),
        "XDG_STATE_HOME": str(paths.state_dir.parent),
    }


def _home_environment(paths: Paths) -> str:
    return "".join(f"Environment={k}={v}\n" for k, v in _home_variables(paths).items())
