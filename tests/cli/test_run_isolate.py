"""`blindkey run --isolate`: a shell agent running as the vault's owner looks for every file
blindkey keeps and for the broker's socket, and finds none; its proxied call still works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from blindkey.broker.approvals_store import approvals_file
from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.paths import Paths
from tests.conftest import ROOT, RunCli

VALUE = "sk-isolated-0123456789abcdef"


def _blindkey(*args: str, home: Paths, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blindkey.cli", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={"BLINDKEY_HOME": str(home.config_dir), "PATH": "/usr/bin:/bin", **kwargs},
    )  # fmt: skip


def test_the_isolated_agent_reads_nothing_of_blindkeys_and_still_calls_through_it(
    home: Paths, run_cli: RunCli, upstream_port: int
) -> None:
    target = f"http://127.0.0.1:{upstream_port}"

    def allow(document: Any) -> None:
        toml_table(document, "allowlist")["hosts"] = string_array([target])

    edit_config(home.config_file, home.lock_file, allow)
    assert run_cli("secrets", "set", "KEY", "--host", target, input=VALUE + "\n").returncode == 0
    token = json.loads(run_cli("agent", "add", "shell", "--json").stdout)["token"]
    assert run_cli("totp", "enroll").returncode == 0  # approvals.bin exists to be looked for
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    try:
        status = json.loads(home.status_file.read_text())
        proxy = f"http://127.0.0.1:{status['port']}/proxy"
        secrets = [
            home.vault_key,
            home.vault_file,
            home.agents_file,
            approvals_file(home),
            home.audit_dir / "chain.key",
            home.config_file,
            home.broker_socket,
        ]
        assert all(path.exists() for path in secrets), [p for p in secrets if not p.exists()]
        # Nor through the proxy's or the broker's view of the file system.
        for pid in (status["pid"] if "pid" in status else int(home.pid_file.read_text()),
                    status.get("broker_pid")):  # fmt: skip
            if pid:
                secrets.append(Path(f"/proc/{pid}/root{home.vault_key}"))
        script = "\n".join(
            [
                f"find {home.config_dir} {home.broker_socket.parent} -mindepth 1"
                " | sed 's/^/SEEN /'",
                *(f"cat {p} >/dev/null 2>&1 && echo READ {p}" for p in secrets),
                f"test -S {home.broker_socket} && echo SOCKET",
                f"curl -s -H 'X-AS-Agent-Token: {token}' -H 'X-AS-Target-URL: {target}/echo' "
                f"-H 'X-AS-Inject-Bearer: KEY' {proxy}",
            ]
        )
        done = _blindkey("run", "--isolate", "--", "sh", "-c", script, home=home)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert not [line for line in lines if line.startswith(("SEEN", "READ", "SOCKET"))]
        answer = json.loads(lines[-1])
        assert dict(answer["headers"])["Authorization"] == "Bearer [REDACTED:KEY]"
        assert VALUE not in done.stdout

        # Without --isolate the same script finds them: the test can tell the difference.
        bare = _blindkey("run", "--", "sh", "-c", script, home=home)
        assert any(line.startswith("READ") for line in bare.stdout.splitlines())
    finally:
        assert run_cli("proxy", "stop").returncode == 0


def test_isolated_commands_keep_their_exit_status(home: Paths) -> None:
    done = _blindkey("run", "--isolate", "--", "sh", "-c", "exit 7", home=home)
    assert done.returncode == 7, done.stderr


def test_where_namespaces_cannot_be_made_it_refuses_in_one_line(home: Paths) -> None:
    """A real place without namespaces: a user namespace of its own whose root has given up
    every capability, with user.max_user_namespaces at 0 (bubblewrap can neither unshare
    directly nor make a user namespace). unshare and setpriv are util-linux's."""
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         'echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv --inh-caps=-all '
         '--bounding-set=-all "$@"', "sh",
         sys.executable, "-m", "blindkey.cli", "run", "--isolate", "--", "echo", "RAN"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        env={"BLINDKEY_HOME": str(home.config_dir), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "RAN" not in done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith("blindkey: run --isolate: bubblewrap cannot isolate here")
    assert "user namespaces" in line
