"""The command tree of `blindkey service`: install, uninstall, status.

Handlers live in service/install.py, imported when chosen (see cli/main.py).
"""

from __future__ import annotations

from blindkey.broker import serve
from blindkey.config.arguments import Subcommands, action_group, json_flag

HANDLERS = "blindkey.service.install"


def add_commands(sub: Subcommands) -> None:
    actions = action_group(
        sub,
        "service",
        help="start blindkey at boot (systemd, launchd)",
        description="User mode: a systemd user unit or a LaunchAgent naming this blindkey. "
        "--system (root): the broker and the proxy as two users of their own, hardened.",
    )
    p = actions.add_parser("install", help="write the unit files and start them")
    p.add_argument("--system", action="store_true", help="system-wide, as root, two users")
    p.add_argument(
        "--elevate-user",
        metavar="USER",
        help="write a sudoers drop-in letting USER run `blindkey elevate` as root",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be written")
    # Writes nothing of the caller's own home: --dry-run writes nothing at all, and
    # --system sets up the service users' homes, not root's.
    p.set_defaults(handler=f"{HANDLERS}:cmd_service_install", needs_home=False)
    p = actions.add_parser("uninstall", help="stop the service and remove its files")
    p.add_argument("--system", action="store_true", help="the system-wide install")
    p.set_defaults(handler=f"{HANDLERS}:cmd_service_uninstall", needs_home=False)
    p = actions.add_parser("status", help="installed? running? the files it uses")
    p.add_argument("--system", action="store_true", help="the system-wide install")
    json_flag(p)
    p.set_defaults(handler=f"{HANDLERS}:cmd_service_status", needs_home=False)
    p = actions.add_parser(
        "broker",
        help="`broker serve` as blindkey-broker.service runs it (systemd notify and watchdog)",
    )
    serve.add_arguments(p)  # the flags of `broker serve`, which this runs
    p.set_defaults(handler="blindkey.service.broker:cmd_service_broker")
