"""The file vault: AES-256-GCM on disk, a 0600 key made once, atomic replacement."""

from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path

import orjson
import pytest

from blindkey.broker.vault import FileVault, VaultError, ensure_key
from blindkey.config.paths import Paths

ROOT = Path(__file__).resolve().parents[2]
VALUE = "ghp_Zx9Q7vLm2Kp4Rt8Wn3Yb6Hc1Jd5Fs0Ga"
OTHER = "sk_live_4eC39HqLyjWDarjtT1zdp7dc0000"


def encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [
        raw,
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        raw.hex().encode(),
        raw.hex().upper().encode(),
        urllib.parse.quote(value).encode(),
        orjson.dumps(value),
        value.encode("utf-16-le"),
    ]


def test_round_trip_per_environment(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "GITHUB_TOKEN", VALUE)
    vault.set("staging", "GITHUB_TOKEN", OTHER)
    vault.set("production", "STRIPE_KEY", "prod-only")

    data = FileVault(home).load()
    assert data == {
        "development": {"GITHUB_TOKEN": VALUE},
        "staging": {"GITHUB_TOKEN": OTHER},
        "production": {"STRIPE_KEY": "prod-only"},
    }


def test_unicode_and_awkward_values_round_trip(home: Paths) -> None:
    vault = FileVault(home)
    awkward = 'päss\n"quoted"\\back\x00nul 🔑 ' + "x" * 10_000
    vault.set("development", "A", awkward)
    assert FileVault(home).load()["development"]["A"] == awkward


def test_missing_vault_loads_empty(home: Paths) -> None:
    assert not home.vault_file.exists()
    assert FileVault(home).load() == {}


def test_delete_removes_value_and_empty_environment(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", "one")
    vault.set("development", "B", "two")
    vault.set("staging", "A", "three")

    assert vault.delete("development", "A") is True
    assert vault.load() == {"development": {"B": "two"}, "staging": {"A": "three"}}
    assert vault.delete("development", "A") is False
    assert vault.delete("nowhere", "A") is False
    assert vault.delete("staging", "A") is True
    assert vault.load() == {"development": {"B": "two"}}


def test_file_holds_no_plaintext_in_any_encoding(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "GITHUB_TOKEN", VALUE)
    vault.set("staging", "STRIPE_KEY", OTHER)

    blob = home.vault_file.read_bytes()
    assert blob.startswith(b"BKV1")
    for value in (VALUE, OTHER):
        for form in encodings(value):
            assert form not in blob, form
    # Names and environments are sealed too: the file reveals only its size.
    for name in (b"GITHUB_TOKEN", b"STRIPE_KEY", b"development", b"staging"):
        assert name not in blob


def test_fresh_nonce_for_every_write(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    first = home.vault_file.read_bytes()
    vault.set("development", "A", VALUE)
    second = home.vault_file.read_bytes()

    assert len(first) == len(second)
    assert first != second
    # bytes 4..16 are the nonce: never reused under the same key
    assert first[4:16] != second[4:16]
    nonces = set()
    for _ in range(20):
        vault.set("development", "A", VALUE)
        nonces.add(home.vault_file.read_bytes()[4:16])
    assert len(nonces) == 20


def _flip(path: Path, index: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[index] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("where", ["magic", "nonce", "ciphertext", "tag"])
def test_tampering_one_byte_is_refused(home: Paths, where: str) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    size = home.vault_file.stat().st_size
    index = {"magic": 0, "nonce": 6, "ciphertext": 20, "tag": size - 1}[where]
    _flip(home.vault_file, index)

    with pytest.raises(VaultError):
        vault.load()


def test_every_single_byte_flip_is_refused(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", "v")
    original = home.vault_file.read_bytes()
    for index in range(len(original)):
        tampered = bytearray(original)
        tampered[index] ^= 0x80
        home.vault_file.write_bytes(bytes(tampered))
        with pytest.raises(VaultError):
            vault.load()


@pytest.mark.parametrize("keep", [0, 3, 4, 16, 31])
def test_truncated_vault_is_refused(home: Paths, keep: int) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    home.vault_file.write_bytes(home.vault_file.read_bytes()[:keep])
    with pytest.raises(VaultError):
        vault.load()


def test_tampered_vault_is_never_overwritten(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    _flip(home.vault_file, 25)
    tampered = home.vault_file.read_bytes()

    with pytest.raises(VaultError):
        vault.set("development", "B", "other")
    assert home.vault_file.read_bytes() == tampered


def test_wrong_key_is_refused(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    home.vault_key.write_bytes(os.urandom(32))

    with pytest.raises(VaultError, match="does not decrypt"):
        vault.load()


def test_key_of_the_wrong_size_is_refused(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    home.vault_key.write_bytes(home.vault_key.read_bytes()[:16])

    with pytest.raises(VaultError, match="256-bit"):
        vault.load()


def test_missing_key_gives_a_clear_error(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    home.vault_key.unlink()

    with pytest.raises(VaultError, match="vault key missing") as info:
        vault.load()
    assert str(home.vault_key) in str(info.value)
    with pytest.raises(VaultError, match="vault key missing"):
        vault.set("development", "B", "x")


def test_key_and_vault_are_mode_0600(home: Paths) -> None:
    FileVault(home).set("development", "A", VALUE)
    assert stat.S_IMODE(home.vault_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.vault_file.stat().st_mode) == 0o600
    assert home.vault_key.stat().st_size == 32


def test_vault_mode_is_0600_even_under_a_permissive_umask(home: Paths) -> None:
    home.vault_key.unlink()
    old = os.umask(0)
    try:
        ensure_key(home)
        FileVault(home).set("development", "A", VALUE)
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.vault_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.vault_key.stat().st_mode) == 0o600


def test_a_loose_vault_mode_is_tightened_on_write(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    home.vault_file.chmod(0o644)
    vault.set("development", "B", VALUE)
    assert stat.S_IMODE(home.vault_file.stat().st_mode) == 0o600


def test_ensure_key_never_overwrites(home: Paths) -> None:
    original = home.vault_key.read_bytes()
    ensure_key(home)
    assert home.vault_key.read_bytes() == original

    custom = bytes(range(32))
    home.vault_key.write_bytes(custom)
    ensure_key(home)
    assert home.vault_key.read_bytes() == custom


def test_ensure_key_refuses_to_replace_the_key_of_an_existing_vault(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", VALUE)
    home.vault_key.unlink()

    with pytest.raises(VaultError, match="restore the key"):
        ensure_key(home)
    assert not home.vault_key.exists()


def test_ensure_key_makes_distinct_random_keys(tmp_path: Path) -> None:
    keys = set()
    for i in range(3):
        root = tmp_path / str(i)
        root.mkdir()
        paths = Paths(config_dir=root, state_dir=root, runtime_dir=root / "run")
        ensure_key(paths)
        keys.add(paths.vault_key.read_bytes())
    assert len(keys) == 3
    assert all(len(k) == 32 for k in keys)


def test_stray_temp_file_does_not_break_the_vault(home: Paths) -> None:
    vault = FileVault(home)
    vault.set("development", "A", "before")
    # What a writer killed between create and rename leaves behind, including our own pid.
    for pid in (os.getpid(), 999_999):
        stray = home.vault_file.with_name(f".{home.vault_file.name}.{pid}.tmp")
        stray.write_bytes(b"BKV1" + b"\x00" * 7)
    assert vault.load() == {"development": {"A": "before"}}

    vault.set("development", "A", "after")
    assert FileVault(home).load() == {"development": {"A": "after"}}


_WRITER = """
import sys
from blindkey.broker.vault import FileVault
from blindkey.config.paths import resolve_paths
vault = FileVault(resolve_paths())
i = 0
while True:
    i += 1
    vault.set("development", "K", f"value-{i}-" + "x" * (i % 97))
    vault.set("staging", f"N{i % 50}", "y" * i)
    if i % 5 == 0:
        sys.stdout.write(f"{i}\\n")
        sys.stdout.flush()
"""


@pytest.mark.parametrize("writes_before_kill", [5, 40])
def test_sigkill_mid_write_leaves_a_decryptable_vault(home: Paths, writes_before_kill: int) -> None:
    FileVault(home).set("development", "K", "value-0-")
    env = {**os.environ, "BLINDKEY_HOME": str(home.config_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        while int(proc.stdout.readline() or 0) < writes_before_kill:
            assert proc.poll() is None, "writer died on its own"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    data = FileVault(home).load()
    value = data["development"]["K"]
    written = int(value.split("-")[1])
    assert written >= writes_before_kill
    assert value == f"value-{written}-" + "x" * (written % 97)
    assert stat.S_IMODE(home.vault_file.stat().st_mode) == 0o600
    # and the vault stays writable afterwards
    FileVault(home).set("development", "K", "fresh")
    assert FileVault(home).load()["development"]["K"] == "fresh"
