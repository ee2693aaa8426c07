"""blindkey's own `proxy start --foreground`, with the audit fsync switched off.

blindkey has no user-facing switch for it yet (`ProxyServer(audit_fsync=...)` exists, but
neither config.toml nor the CLI reaches it), so this bench-only entry point binds the
keyword and then runs the real CLI unchanged: same pid lock, uvloop, signals and broker.

    python -m bench.launch --audit-fsync off proxy start --foreground --port 0
"""

from __future__ import annotations

import functools
import inspect
import sys

from proxy import cli, lifecycle

UNSUPPORTED_EXIT = 4


def main(argv: list[str]) -> int:
    fsync = True
    if argv[:1] == ["--audit-fsync"] and len(argv) >= 2:
        fsync = argv[1] != "off"
        argv = argv[2:]
    original = getattr(lifecycle, "ProxyServer", None)
    if original is None or "audit_fsync" not in inspect.signature(original).parameters:
        sys.stderr.write("blindkey: this blindkey has no audit_fsync switch to bind\n")
        return UNSUPPORTED_EXIT
    setattr(lifecycle, "ProxyServer", functools.partial(original, audit_fsync=fsync))  # noqa: B010
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
