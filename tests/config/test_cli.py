"""`blindkey config check` and `blindkey init`, run as a user runs them."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG
from tests.conftest import RunCli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("blindkey: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, stderr)


def test_config_check_ok(home: Paths, run_cli: RunCli) -> None:
    result = run_cli("config", "check")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"{home.config_file}: ok")
    assert "backend file" in result.stdout
    assert "environment development" in result.stdout


def test_config_check_counts_entries(home: Paths, run_cli: RunCli) -> None:
    text = DEFAULT_CONFIG.replace("hosts = []", 'hosts = ["api.github.com", "*.stripe.com"]')
    text += '\n[secrets.GITHUB_TOKEN]\ntier = "open"\n'
    home.config_file.write_text(text)
    result = run_cli("config", "check")
    assert result.returncode == 0, result.stderr
    assert "2 allowlist entries" in result.stdout
    assert "1 secret policies" in result.stdout


def test_config_check_typo_is_one_line_exit_1(home: Paths, run_cli: RunCli) -> None:
    home.config_file.write_text(DEFAULT_CONFIG.replace("port = 8765", "prot = 8765"))
    result = run_cli("config", "check")
    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_error_line(result.stderr, str(home.config_file), "[proxy]", "'prot'", "'port'")


def test_config_check_invalid_toml_is_one_line(home: Paths, run_cli: RunCli) -> None:
    home.config_file.write_text(DEFAULT_CONFIG + "\n[proxy\n")
    result = run_cli("config", "check")
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "invalid TOML")


def test_config_check_non_utf8_is_one_line(home: Paths, run_cli: RunCli) -> None:
    home.config_file.write_bytes(b"\xff\xfe" + DEFAULT_CONFIG.encode())
    result = run_cli("config", "check")
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "not UTF-8")


def test_config_check_other_file(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    other = tmp_path / "candidate.toml"
    other.write_text(DEFAULT_CONFIG.replace('active = "development"', 'active = "staging"'))
    result = run_cli("config", "check", "--config", str(other))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{other}: ok")
    assert "environment staging" in result.stdout


def test_config_check_other_bad_file_leaves_home_alone(
    home: Paths, run_cli: RunCli, tmp_path: Path
) -> None:
    other = tmp_path / "candidate.toml"
    other.write_text(DEFAULT_CONFIG.replace("hosts = []", 'hosts = ["user@host"]'))
    before = home.config_file.read_bytes()
    result = run_cli("config", "check", "--config", str(other))
    assert result.returncode == 1
    assert_one_error_line(result.stderr, str(other), "[allowlist] hosts", "user@host")
    assert home.config_file.read_bytes() == before


def test_config_check_missing_other_file(home: Paths, run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("config", "check", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "absent.toml", "no such file")


def test_config_check_without_action_is_usage_error(home: Paths, run_cli: RunCli) -> None:
    result = run_cli("config")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_init_is_idempotent(home: Paths, run_cli: RunCli) -> None:
    custom = DEFAULT_CONFIG.replace("hosts = []", 'hosts = ["api.github.com"]') + "# mine\n"
    home.config_file.write_text(custom)
    key = home.vault_key.read_bytes()
    for _ in range(2):
        result = run_cli("init")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{home.config_file}: already initialised"
    assert home.config_file.read_text() == custom
    assert home.vault_key.read_bytes() == key


def test_init_creates_private_home(home: Paths, run_cli: RunCli) -> None:
    shutil.rmtree(home.config_dir)
    result = run_cli("init")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{home.config_file}: created"
    assert home.config_file.read_text() == DEFAULT_CONFIG
    for file in (home.config_file, home.vault_key):
        assert mode(file) == 0o600, file
    for directory in (home.config_dir, home.audit_dir, home.runtime_dir, home.broker_socket.parent):
        assert mode(directory) == 0o700, directory
    assert len(home.vault_key.read_bytes()) == 32
    again = run_cli("init")
    assert again.stdout.strip() == f"{home.config_file}: already initialised"
    assert run_cli("config", "check").returncode == 0


def test_init_tightens_an_open_home(home: Paths, run_cli: RunCli) -> None:
    home.config_dir.chmod(0o755)
    home.audit_dir.chmod(0o777)
    result = run_cli("init")
    assert result.returncode == 0, result.stderr
    assert mode(home.config_dir) == 0o700
    assert mode(home.audit_dir) == 0o700


def test_any_command_initialises_a_missing_home(home: Paths, run_cli: RunCli) -> None:
    shutil.rmtree(home.config_dir)
    result = run_cli("allowlist", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert home.config_file.read_text() == DEFAULT_CONFIG
    assert mode(home.config_file) == 0o600
    assert mode(home.vault_key) == 0o600
    assert mode(home.config_dir) == 0o700
    assert mode(home.audit_dir) == 0o700


def test_allowlist_edit_on_non_utf8_config_is_one_line(home: Paths, run_cli: RunCli) -> None:
    """An edit command on a broken file fails like `config check` does, leaving it alone."""
    broken = DEFAULT_CONFIG.encode() + "# caf\xe9\n".encode("latin-1")
    home.config_file.write_bytes(broken)
    result = run_cli("allowlist", "add", "api.github.com")
    assert result.returncode == 1
    assert_one_error_line(result.stderr, str(home.config_file), "not UTF-8")
    assert home.config_file.read_bytes() == broken


def test_allowlist_add_with_invalid_config_is_refused(home: Paths, run_cli: RunCli) -> None:
    broken = DEFAULT_CONFIG.replace("port = 8765", "prot = 8765")
    home.config_file.write_text(broken)
    result = run_cli("allowlist", "add", "api.github.com")
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "'prot'")
    assert home.config_file.read_text() == broken


def test_allowlist_add_bad_port_is_one_line(home: Paths, run_cli: RunCli) -> None:
    before = home.config_file.read_bytes()
    result = run_cli("allowlist", "add", "api.github.com:²")
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "port must be a number")
    assert home.config_file.read_bytes() == before


def test_allowlist_remove_of_an_unlisted_entry_says_what_stays(
    home: Paths, run_cli: RunCli
) -> None:
    """All or nothing: one unlisted entry removes none, and the message says so for each."""
    assert run_cli("allowlist", "add", "a.example.com").returncode == 0
    config = home.config_file.read_bytes()
    result = run_cli("allowlist", "remove", "a.example.com", "b.example.com")
    assert result.returncode == 1
    assert_one_error_line(
        result.stderr,
        "not on the allowlist: b.example.com",
        "nothing was removed; a.example.com is still listed",
    )
    assert home.config_file.read_bytes() == config


def test_a_cli_edit_of_an_emptied_config_refuses(home: Paths, run_cli: RunCli) -> None:
    """Issue: an emptied config.toml plus `allowlist add` wrote a default file, and every
    [secrets.*] binding with it was gone. Now the edit refuses and the file stays empty."""
    home.config_file.write_bytes(b"")
    result = run_cli("allowlist", "add", "evil.example.com")
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "holds no settings", "blindkey init")
    assert home.config_file.read_bytes() == b""


def test_init_with_another_backend_on_an_existing_home_refuses(
    home: Paths, run_cli: RunCli
) -> None:
    """Issue: it said "already initialised", kept the old backend and exited 0."""
    config = home.config_file.read_bytes()
    result = run_cli("init", "--backend", "keyring")
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "exists with backend file", 'kind = "keyring"')
    assert home.config_file.read_bytes() == config
    assert run_cli("init", "--backend", "file").returncode == 0
    assert run_cli("init").returncode == 0
