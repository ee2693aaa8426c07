"""The wheel users install: every module in it, nothing outside blindkey's namespace, and
the README's quick start run from a venv that never saw this checkout."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunCli
from tests.staging import PACKAGES, ROOT, Installed, clean_env

pytestmark = pytest.mark.timeout(600)  # the first user builds and installs the wheel
VALUE = "ghp_wheelInstalledValue0123456789"


def source_modules() -> list[str]:
    modules = []
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = file.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules.append(".".join(("blindkey", *parts)))
    return modules


def run(installed: Installed, *args: str, home: Path, stdin: str = "") -> str:
    result = subprocess.run(
        [installed.blindkey, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(BLINDKEY_HOME=str(home)),
        cwd="/",
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def test_every_module_of_the_checkout_imports_from_the_wheel(installed: Installed) -> None:
    modules = source_modules()
    assert "blindkey.broker.backends.file" in modules
    script = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    script += "\nimport blindkey.proxy; print(blindkey.proxy.__file__)"
    result = subprocess.run(
        [installed.python, "-c", script, *modules],
        cwd="/",
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    installed_file = Path(result.stdout.strip())
    assert not installed_file.is_relative_to(ROOT), installed_file
    site_packages = installed_file.parent.parent.parent
    names = {p.name for p in site_packages.iterdir()}
    # blindkey installs nothing that could shadow another distribution's modules
    assert not names & set(PACKAGES), names & set(PACKAGES)


def test_version_says_which_install_runs(installed: Installed, tmp_path: Path) -> None:
    """The version, then the environment and the code it runs from: a make-run venv, pipx
    and uv installs of one version are told apart. An installed wheel has no commit."""
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    lines = run(installed, "--version", home=tmp_path).strip().splitlines()
    assert lines[0] == f"blindkey {expected}"
    python, code = Path(lines[1].removeprefix("python: ")), Path(lines[2].removeprefix("code: "))
    assert not python.is_relative_to(ROOT) and not code.is_relative_to(ROOT)
    assert code.name == "blindkey" and (code / "proxy" / "server.py").is_file()
    assert len(lines) == 3


def test_version_from_a_checkout_names_its_commit(run_cli: RunCli) -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    done = run_cli("--version")
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[2] == f"code: {ROOT}"
    assert lines[3].startswith(f"commit: {head}")


def test_quick_start_from_the_installed_wheel(
    installed: Installed, tmp_path: Path, upstream_port: int
) -> None:
    home = tmp_path / "home"
    upstream = f"http://127.0.0.1:{upstream_port}"
    run(installed, "init", home=home)
    run(installed, "allowlist", "add", upstream, home=home)
    run(installed, "secrets", "set", "GITHUB_TOKEN", "--host", upstream, home=home, stdin=VALUE)
    token = json.loads(run(installed, "agent", "add", "my-agent", "--json", home=home))["token"]
    run(installed, "proxy", "start", "--port", "0", home=home)
    try:
        status = json.loads(run(installed, "proxy", "status", "--json", home=home))
        answer = httpx.get(
            f"http://127.0.0.1:{status['port']}/proxy",
            headers={
                "X-AS-Agent-Token": token,
                "X-AS-Target-URL": f"{upstream}/echo",
                "X-AS-Inject-Bearer": "GITHUB_TOKEN",
            },
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        digest = hashlib.sha256(f"Bearer {VALUE}".encode()).hexdigest()
        assert answer.headers["X-Echo-Authorization-Sha256"] == digest
        assert VALUE not in answer.text
        logs = json.loads(run(installed, "proxy", "logs", "--last", "1", "--json", home=home))
        assert logs[0]["decision"] == "allowed" and logs[0]["secrets"] == ["GITHUB_TOKEN"]
    finally:
        run(installed, "proxy", "stop", home=home)
