"""edit_config: the user's comments survive; an edit that breaks the file is refused whole."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import tomlkit

from blindkey.config.edit import edit_config, string_array, toml_table
from blindkey.config.errors import BlindkeyError, ConfigError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.config.template import DEFAULT_CONFIG

USER_CONFIG = """\
# my own notes at the top
[proxy]
port = 8765   # keep this port: the firewall expects it

# the hosts my agents need
[allowlist]
hosts = [
    "api.github.com",  # CI
]
private_ranges = []
"""


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def add_host(entry: str):  # type: ignore[no-untyped-def]
    def change(document: tomlkit.TOMLDocument) -> None:
        section = toml_table(document, "allowlist")
        section["hosts"].append(entry)

    return change


def test_edit_keeps_user_comments(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(USER_CONFIG)
    settings = edit_config(file, tmp_path / "lock", add_host("*.stripe.com"))
    text = file.read_text()
    for comment in (
        "# my own notes at the top",
        "# keep this port: the firewall expects it",
        "# the hosts my agents need",
        "# CI",
    ):
        assert comment in text
    assert [e.text for e in settings.allowlist.entries] == ["api.github.com", "*.stripe.com"]
    assert [e.text for e in load_settings(file).allowlist.entries] == [
        "api.github.com",
        "*.stripe.com",
    ]
    assert stat.S_IMODE(file.stat().st_mode) == 0o600


def test_edit_of_default_config_keeps_its_comments(home: Paths) -> None:
    def change(document: tomlkit.TOMLDocument) -> None:
        toml_table(document, "allowlist")["hosts"] = string_array(["api.github.com"])

    edit_config(home.config_file, home.lock_file, change)
    text = home.config_file.read_text()
    assert 'hosts = ["api.github.com"]' in text
    # Every comment line of the default file is still there, in order.
    comments = [line for line in DEFAULT_CONFIG.splitlines() if line.lstrip().startswith("#")]
    kept = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert kept == comments


def test_toml_table_creates_a_real_secrets_section(home: Paths) -> None:
    def change(document: tomlkit.TOMLDocument) -> None:
        policy = toml_table(document, "secrets", "GITHUB_TOKEN")
        policy["tier"] = "controlled"
        policy["hosts"] = string_array(["api.github.com"])

    settings = edit_config(home.config_file, home.lock_file, change)
    assert settings.policy("GITHUB_TOKEN").tier == "controlled"
    text = home.config_file.read_text()
    assert "[secrets.GITHUB_TOKEN]" in text
    assert "\n[secrets]\n" not in text


def test_toml_table_refuses_a_non_table(tmp_path: Path) -> None:
    document = tomlkit.parse('allowlist = "oops"\n')
    with pytest.raises(ConfigError, match=r"\[allowlist\] must be a table"):
        toml_table(document, "allowlist")


@pytest.mark.parametrize(
    ("entry_key", "value", "fragment"),
    [
        ("hosts", ["ftp://x"], "scheme must be http or https"),
        ("hosts", ["2130706433"], "non-canonical IPv4"),
        ("private_ranges", ["10.0.0.1/8"], "host bits"),
        ("typo", ["x"], "unknown key 'typo'"),
    ],
    ids=["bad-scheme", "decimal-ip", "bad-cidr", "unknown-key"],
)
def test_invalid_edit_is_refused_and_file_unchanged(
    tmp_path: Path, entry_key: str, value: list[str], fragment: str
) -> None:
    file = tmp_path / "config.toml"
    file.write_text(USER_CONFIG)
    file.chmod(0o600)
    before = file.read_bytes()
    before_stat = file.stat()

    def change(document: tomlkit.TOMLDocument) -> None:
        toml_table(document, "allowlist")[entry_key] = string_array(value)

    with pytest.raises(ConfigError, match=fragment) as info:
        edit_config(file, tmp_path / "lock", change)
    assert str(info.value).startswith(f"{file}: [allowlist]")
    assert file.read_bytes() == before
    assert file.stat().st_ino == before_stat.st_ino  # not even rewritten
    assert files_in(tmp_path) == ["config.toml", "lock"]


def test_change_that_raises_leaves_file_unchanged(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(USER_CONFIG)
    before = file.read_bytes()

    def change(document: tomlkit.TOMLDocument) -> None:
        toml_table(document, "allowlist")["hosts"] = string_array([])
        raise BlindkeyError("not on the allowlist: example.com")

    with pytest.raises(BlindkeyError, match="not on the allowlist"):
        edit_config(file, tmp_path / "lock", change)
    assert file.read_bytes() == before


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; run `blindkey init`"):
        edit_config(tmp_path / "config.toml", tmp_path / "lock", add_host("x.example"))
    assert not (tmp_path / "config.toml").exists()


def test_invalid_toml_is_refused_and_left_alone(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text("[allowlist\nhosts = []\n")
    before = file.read_bytes()
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        edit_config(file, tmp_path / "lock", add_host("x.example"))
    assert str(info.value).startswith(str(file))
    assert file.read_bytes() == before


def test_non_utf8_file_is_a_config_error_and_left_alone(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_bytes(USER_CONFIG.encode() + "# caf\xe9\n".encode("latin-1"))
    before = file.read_bytes()
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        edit_config(file, tmp_path / "lock", add_host("x.example"))
    assert str(info.value).startswith(str(file))
    assert file.read_bytes() == before


def test_already_invalid_file_cannot_be_edited_into_place(tmp_path: Path) -> None:
    """An edit validates the whole result, so a file that was broken by hand stays as it was."""
    file = tmp_path / "config.toml"
    file.write_text(USER_CONFIG.replace("port = 8765", "prot = 8765"))
    before = file.read_bytes()
    with pytest.raises(ConfigError, match="did you mean 'port'"):
        edit_config(file, tmp_path / "lock", add_host("x.example"))
    assert file.read_bytes() == before


def test_concurrent_edits_all_land(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(USER_CONFIG)
    lock = tmp_path / "lock"
    errors: list[BaseException] = []

    def worker(prefix: str) -> None:
        try:
            for i in range(10):
                edit_config(file, lock, add_host(f"{prefix}{i}.example"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    hosts = {e.text for e in load_settings(file).allowlist.entries}
    assert hosts == {"api.github.com"} | {f"{p}{i}.example" for p in "abc" for i in range(10)}
    assert "# CI" in file.read_text()


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_emptied_config_is_not_rebuilt_from_defaults(home: Paths, text: str) -> None:
    """A config.toml that lost its content refuses every CLI edit and stays as it is."""
    home.config_file.write_text(text)

    def change(document: tomlkit.TOMLDocument) -> None:
        toml_table(document, "allowlist")

    with pytest.raises(ConfigError, match="holds no settings"):
        edit_config(home.config_file, home.lock_file, change)
    assert home.config_file.read_text() == text
