"""The keyring backend against a real Secret Service (gnome-keyring on a private bus)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.backends import BackendUnavailable
from blindkey.broker.backends.keychain import KeychainBackend
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import BrokerDenied
from blindkey.broker.server import BrokerServer
from blindkey.config.paths import Paths
from tests.broker.conftest import (
    Brokers,
    SecretService,
    acli,
    one_line_error,
    pass_time,
    point_at,
    resolve,
    use_backend,
)
from tests.conftest import RunCli

VALUE = "ghp_keychainValue0123456789abcdefXYZ"
STAGING = "stg_keychainValue9876543210zyxwv"


@pytest.fixture
def keyring_home(home: Paths, secret_service: SecretService) -> Paths:
    use_backend(home.config_dir, 'kind = "keyring"', ttl="30s")
    return home


def files_under(home: Paths) -> Iterator[Path]:
    return (f for f in Path(home.config_dir).rglob("*") if f.is_file())


def test_values_live_in_the_keychain_and_only_names_on_disk(
    keyring_home: Paths, secret_service: SecretService, run_cli: RunCli
) -> None:
    assert run_cli("secrets", "set", "GH", input=VALUE + "\n").returncode == 0
    result = run_cli("secrets", "set", "GH", "--env", "staging", input=STAGING)
    assert result.returncode == 0, result.stderr

    assert secret_service.items() == {"development/GH": VALUE, "staging/GH": STAGING}
    for file in files_under(keyring_home):
        content = file.read_bytes()
        assert VALUE.encode() not in content and STAGING.encode() not in content, file
    assert not keyring_home.vault_file.exists()
    rows = json.loads(run_cli("secrets", "list", "--json").stdout)
    assert [(r["name"], r["envs"]) for r in rows] == [("GH", ["development", "staging"])]
    compared = run_cli("secrets", "diff", "--from", "development", "--to", "staging", "--json")
    assert compared.returncode == 1, compared.stderr
    assert json.loads(compared.stdout)["differ"] == ["GH"]

    assert run_cli("secrets", "delete", "GH", "--env", "staging").returncode == 0
    assert secret_service.items() == {"development/GH": VALUE}
    backend = KeychainBackend(keyring_home)
    assert backend.values("development") == {"GH": VALUE}
    assert backend.values("staging") == {}
    assert backend.get("staging", "GH") is None


def test_a_fallback_backend_is_never_chosen(
    keyring_home: Paths,
    secret_service: SecretService,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # keyring itself would obey this and store nowhere (null) or in plain text (keyrings.alt).
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    assert run_cli("secrets", "set", "GH", input=VALUE).returncode == 0
    assert secret_service.items() == {"development/GH": VALUE}

    # No Secret Service at all: one clear line, and the value is nowhere.
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
    line = one_line_error(run_cli("secrets", "set", "OTHER", input="other-value-123"))
    assert "no OS keychain" in line
    assert 'kind = "file"' in line
    assert "Traceback" not in line
    assert "OTHER" not in KeychainBackend(keyring_home).names("development")
    for file in files_under(keyring_home):
        assert b"other-value-123" not in file.read_bytes()


def test_locked_keychain_is_one_clear_line(
    keyring_home: Paths, secret_service: SecretService, run_cli: RunCli
) -> None:
    assert run_cli("secrets", "set", "GH", input=VALUE).returncode == 0
    secret_service.lock()
    # No prompter can be shown here, so the unlock prompt ends dismissed.
    line = one_line_error(run_cli("secrets", "set", "GH", input="rotated-while-locked"))
    assert "keychain is locked" in line
    assert "unlock it" in line
    with pytest.raises(BackendUnavailable, match="keychain is locked"):
        KeychainBackend(keyring_home).get("development", "GH")


@pytest.fixture
async def keyring_broker(
    keyring_home: Paths, brokers: Brokers
) -> tuple[BrokerServer, BrokerClient, str]:
    token = AgentStore(keyring_home.agents_file, keyring_home.lock_file).add("claude")
    server = await brokers.start(keyring_home)
    return server, brokers.client(server), token


async def test_broker_serves_warm_values_from_memory_while_the_keychain_is_locked(
    keyring_broker: tuple[BrokerServer, BrokerClient, str],
    keyring_home: Paths,
    secret_service: SecretService,
) -> None:
    server, client, token = keyring_broker
    backend = KeychainBackend(keyring_home)
    await asyncio.to_thread(backend.set, "development", "GH", VALUE)
    await asyncio.to_thread(backend.set, "development", "OTHER", "other-value-456")
    server.state.refresh()

    assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}
    assert (await resolve(client, token, "NOPE"))["denied"]["error"] == "unknown_secret"

    await asyncio.to_thread(secret_service.lock)
    # Warm: answered without asking the keychain, and as fast as a file-vault value.
    started = time.perf_counter()
    for _ in range(200):
        assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}
    assert (time.perf_counter() - started) / 200 < 0.005
    # Cold: the keychain must be asked, and it is locked: 503 with what to do.
    with pytest.raises(BrokerDenied) as info:
        await resolve(client, token, "OTHER")
    assert info.value.code == "broker_unavailable"
    assert "keychain is locked" in str(info.value)
    assert "keychain is locked" in (await client.call("ping"))["backend_error"]


async def test_cached_values_expire_after_cache_ttl(
    keyring_broker: tuple[BrokerServer, BrokerClient, str],
    keyring_home: Paths,
    secret_service: SecretService,
) -> None:
    server, client, token = keyring_broker
    config = keyring_home.config_file
    config.write_text(config.read_text().replace('cache_ttl = "30s"', 'cache_ttl = "1s"'))
    await asyncio.to_thread(KeychainBackend(keyring_home).set, "development", "GH", VALUE)
    server.state.refresh()
    assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}
    assert (await client.call("redaction_set"))["values"] == {"GH": VALUE}

    await asyncio.to_thread(secret_service.lock)
    assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}
    pass_time(server, 1.1)  # the cache's own clock, not a sleep
    with pytest.raises(BrokerDenied) as info:
        await resolve(client, token, "GH")
    assert info.value.code == "broker_unavailable"
    assert "keychain is locked" in str(info.value)
    generation = server.state.generation
    assert server.state.expire() is True, "the expired value leaves memory"
    assert server.state.generation == generation + 1, "and the proxy is told"
    assert (await client.call("redaction_set"))["values"] == {}


async def test_rotation_and_delete_reach_a_running_broker_before_the_cli_returns(
    keyring_broker: tuple[BrokerServer, BrokerClient, str], keyring_home: Paths
) -> None:
    server, client, token = keyring_broker
    point_at(keyring_home, server.socket_path)  # where the CLI finds the broker
    home = keyring_home.config_dir
    assert (await acli(home, "secrets", "set", "GH", stdin=VALUE)).returncode == 0
    assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}

    for i in range(3):
        rotated = f"rotated-{i}-{VALUE}"
        assert (await acli(home, "secrets", "set", "GH", stdin=rotated)).returncode == 0
        assert (await resolve(client, token, "GH"))["values"] == {"GH": rotated}

    assert (await acli(home, "secrets", "delete", "GH")).returncode == 0
    assert (await resolve(client, token, "GH"))["denied"]["error"] == "unknown_secret"
