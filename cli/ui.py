"""`blindkey ui`: the local page (pending approvals, live calls, grants, agents, the audit
report, policy changes, passkeys). The server is blindkey.ui, imported when chosen."""

from __future__ import annotations

import argparse
import asyncio

from blindkey.config.arguments import Subcommands, port
from blindkey.config.paths import Paths

DEFAULT_PORT = 8766
DESCRIPTION = """\
Serve the approvers' page on 127.0.0.1 and print a one-time login link (it works once,
within two minutes, and opens a session in that browser only). From the page: approve
pending calls with a TOTP code or a passkey, deny them, revoke grants, watch calls as the
audit records them, read the audit report and the policy-change history, and enrol a
passkey for an approver (with a TOTP code of that approver).

Everything goes through the broker, as the CLI does; the page never holds a secret value.
Open it as http://localhost:PORT (passkeys need that name). Stop it with Ctrl-C.
"""


def cmd_ui(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.ui.server import serve

    asyncio.run(serve(paths, args.port, open_browser=not args.no_open))
    return 0


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser(
        "ui",
        help="the local page: approve with a code or a passkey, live calls, grants, report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--port", type=port, default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0: any free port, printed)",
    )  # fmt: skip
    p.add_argument(
        "--no-open", action="store_true", help="print the login link without opening a browser"
    )
    p.set_defaults(handler=cmd_ui)
