"""The openbao backend against a real `bao server -dev` on loopback."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.backends import BackendError, BackendUnavailable
from blindkey.broker.backends.openbao import OpenBaoBackend
from blindkey.broker.client import BrokerClient
from blindkey.broker.protocol import BrokerDenied, Message
from blindkey.broker.server import BrokerServer
from blindkey.config.paths import Paths
from blindkey.config.stores import OpenBaoSettings
from tests.broker.conftest import (
    ROOT_TOKEN,
    Bao,
    Brokers,
    StartBao,
    acli,
    one_line_error,
    pass_time,
    point_at,
    resolve,
    use_backend,
)

VALUE = "ghp_baoValue0123456789abcdefXYZ"
READ_ONLY = """
path "secret/data/blindkey/*" { capabilities = ["read"] }
path "secret/metadata/blindkey/*" { capabilities = ["list", "read"] }
"""
ELSEWHERE = 'path "secret/data/other/*" { capabilities = ["read"] }'
READ_WRITE = """
path "secret/data/blindkey/*" { capabilities = ["create", "update", "read"] }
path "secret/metadata/blindkey/*" { capabilities = ["list", "read", "delete"] }
"""


def backend_for(bao: Bao, tmp_path: Path, token: str = ROOT_TOKEN, **extra: str) -> OpenBaoBackend:
    token_file = tmp_path / f"token-{abs(hash(token))}"
    token_file.write_text(token + "\n")
    settings = OpenBaoSettings(
        address=bao.address, ca_file=bao.ca_file, token_file=str(token_file), **extra
    )
    return OpenBaoBackend(settings)


def test_values_round_trip_at_the_documented_paths(start_bao: StartBao, tmp_path: Path) -> None:
    bao = start_bao()
    backend = backend_for(bao, tmp_path)
    try:
        backend.set("development", "GH", VALUE)
        backend.set("staging", "GH", "staging-value")
        backend.set("development", "STRIPE", "sk_test_value")
        # where a teammate's `bao kv get secret/blindkey/development/GH` finds it
        assert bao.read("blindkey/development/GH") == VALUE
        assert backend.names("development") == {"GH", "STRIPE"}
        assert backend.values("staging") == {"GH": "staging-value"}
        assert backend.get("production", "GH") is None
        assert backend.names("production") == set()

        bao.write("blindkey/development/GH", "rotated-by-a-teammate")
        assert backend.get("development", "GH") == "rotated-by-a-teammate"
        bao.write("blindkey/development/9LIVES", "x")  # not a blindkey name
        assert backend.names("development") == {"GH", "STRIPE"}

        assert backend.delete("development", "GH") is True
        assert backend.delete("development", "GH") is False
        assert backend.get("development", "GH") is None
        assert backend.names("development") == {"STRIPE"}
        assert bao.api("GET", "/v1/secret/metadata/blindkey/development/GH")[0] == 404
    finally:
        backend.close()


def test_mount_prefix_and_namespace(start_bao: StartBao, tmp_path: Path) -> None:
    bao = start_bao()
    bao.ok("POST", "/v1/sys/namespaces/team-a", {})
    bao.ok(
        "POST",
        "/v1/sys/mounts/kv2",
        {"type": "kv", "options": {"version": "2"}},
        **{"X-Vault-Namespace": "team-a"},
    )
    backend = backend_for(bao, tmp_path, mount="kv2", prefix="apps/agent", namespace="team-a")
    try:
        backend.set("development", "GH", VALUE)
        status, data = bao.api(
            "GET",
            "/v1/kv2/data/apps/agent/development/GH",
            **{"X-Vault-Namespace": "team-a"},
        )
        assert status == 200 and data["data"]["data"] == {"value": VALUE}
        assert bao.api("GET", "/v1/kv2/data/apps/agent/development/GH")[0] != 200
        assert backend.values("development") == {"GH": VALUE}
    finally:
        backend.close()


def test_a_value_without_the_value_field_is_a_clear_error(
    start_bao: StartBao, tmp_path: Path
) -> None:
    bao = start_bao()
    bao.ok("POST", "/v1/secret/data/blindkey/development/GH", {"data": {"token": "x"}})
    backend = backend_for(bao, tmp_path)
    try:
        with pytest.raises(BackendError, match="has no string field 'value'"):
            backend.get("development", "GH")
    finally:
        backend.close()


def test_sealed_forbidden_unreachable_and_no_token_are_one_clear_line_each(
    start_bao: StartBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bao = start_bao()
    bao.write("blindkey/development/GH", VALUE)
    monkeypatch.delenv("BAO_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    forbidden = backend_for(bao, tmp_path, token=bao.token(ELSEWHERE))
    tokenless = OpenBaoBackend(OpenBaoSettings(address=bao.address))
    reader = backend_for(bao, tmp_path)
    try:
        for backend, expected in [
            (forbidden, "refused to read GH in development (permission denied)"),
            (tokenless, "no OpenBao token: set token_file, or BAO_TOKEN"),
        ]:
            with pytest.raises(BackendError) as info:
                backend.get("development", "GH")
            assert expected in str(info.value)
            assert "\n" not in str(info.value)

        monkeypatch.setenv("VAULT_TOKEN", ROOT_TOKEN)  # the variable Vault users already have
        assert tokenless.get("development", "GH") == VALUE

        assert reader.get("development", "GH") == VALUE
        bao.seal()
        with pytest.raises(BackendUnavailable, match=r"is sealed; unseal it \(`bao operator"):
            reader.get("development", "GH")
        bao.unseal()
        assert reader.get("development", "GH") == VALUE

        bao.stop()
        with pytest.raises(BackendUnavailable, match=r"is unreachable .*check the address"):
            reader.get("development", "GH")
    finally:
        for backend in (forbidden, tokenless, reader):
            backend.close()


def test_tls_with_ca_file(start_bao: StartBao, tmp_path: Path) -> None:
    bao = start_bao(tls=True)
    backend = backend_for(bao, tmp_path)
    backend.set("development", "GH", VALUE)
    assert backend.get("development", "GH") == VALUE
    backend.close()

    untrusting = OpenBaoBackend(replace(backend.settings, ca_file=""))
    with pytest.raises(BackendUnavailable, match=r"TLS failed .*ca_file"):
        untrusting.get("development", "GH")
    untrusting.close()


def test_token_is_renewed_before_it_expires(start_bao: StartBao, tmp_path: Path) -> None:
    bao = start_bao()
    bao.write("blindkey/development/GH", VALUE)
    short = bao.token(READ_ONLY, ttl="3s", renewable=True)
    backend = backend_for(bao, tmp_path, token=short)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert backend.get("development", "GH") == VALUE
        time.sleep(0.25)
    left = backend.http.seconds_left()
    assert left is not None and left > 1.0, "renewed: not about to expire"
    # 5s into a 3s token, the server still takes it: it was renewed, not replaced
    assert backend.http._token == short
    lookup = bao.api("GET", "/v1/secret/data/blindkey/development/GH", token=short)
    assert lookup[0] == 200
    backend.close()


def test_approle_login_and_relogin(start_bao: StartBao, tmp_path: Path) -> None:
    bao = start_bao()
    bao.write("blindkey/development/GH", VALUE)
    bao.ok("POST", "/v1/sys/auth/approle", {"type": "approle"})
    bao.ok("PUT", "/v1/sys/policies/acl/blindkey-rw", {"policy": READ_WRITE})
    bao.ok(
        "POST",
        "/v1/auth/approle/role/blindkey",
        {"token_policies": ["blindkey-rw"], "token_ttl": "2s", "token_max_ttl": "2s"},
    )
    role_id = bao.ok("GET", "/v1/auth/approle/role/blindkey/role-id")["data"]["role_id"]
    secret_id = bao.ok("POST", "/v1/auth/approle/role/blindkey/secret-id", {})["data"]["secret_id"]
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(secret_id + "\n")
    settings = OpenBaoSettings(
        address=bao.address, auth="approle", role_id=role_id, secret_id_file=str(secret_file)
    )
    backend = OpenBaoBackend(settings)
    assert backend.get("development", "GH") == VALUE
    backend.set("development", "NEW", "new-value")
    first = backend.http._token
    # The token cannot be renewed past its max TTL: blindkey logs in again.
    time.sleep(2.2)
    assert backend.get("development", "NEW") == "new-value"
    assert backend.http._token != first

    wrong = OpenBaoBackend(replace(settings, role_id="not-a-role"))
    with pytest.raises(BackendError, match="refused to log in with AppRole"):
        wrong.get("development", "GH")
    wrong.close()
    backend.close()


# --- the broker on an OpenBao backend ------------------------------------------------------


@pytest.fixture
async def bao_broker(
    home: Paths, start_bao: StartBao, brokers: Brokers, tmp_path: Path
) -> tuple[Bao, BrokerServer, BrokerClient, str]:
    bao = start_bao()
    token_file = tmp_path / "bao-token"
    token_file.write_text(ROOT_TOKEN)
    use_backend(
        home.config_dir,
        f'kind = "openbao"\naddress = "{bao.address}"\ntoken_file = "{token_file}"',
        ttl="1s",
    )
    point_at(home, brokers.socket)
    token = AgentStore(home.agents_file, home.lock_file).add("claude")
    server = await brokers.start(home)
    return bao, server, brokers.client(server), token


async def test_broker_serves_cached_values_until_they_expire_then_503(
    bao_broker: tuple[Bao, BrokerServer, BrokerClient, str],
) -> None:
    bao, server, client, token = bao_broker
    await asyncio.to_thread(bao.write, "blindkey/development/GH", VALUE)
    assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}
    assert (await resolve(client, token, "NOPE"))["denied"]["error"] == "unknown_secret"

    await asyncio.to_thread(bao.seal)
    assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}, "cached"
    pass_time(server, 1.1)  # the cache's own clock, not a sleep
    with pytest.raises(BrokerDenied) as info:
        await resolve(client, token, "GH")
    assert info.value.code == "broker_unavailable"
    assert "is sealed; unseal it" in str(info.value)

    await asyncio.to_thread(bao.unseal)
    assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}


async def test_sync_keeps_warm_values_warm_and_sees_remote_rotation(
    bao_broker: tuple[Bao, BrokerServer, BrokerClient, str],
) -> None:
    bao, server, client, token = bao_broker
    await asyncio.to_thread(bao.write, "blindkey/development/GH", VALUE)
    pushes: asyncio.Queue[Message] = asyncio.Queue()
    watcher = BrokerClient(server.socket_path, on_push=pushes.put_nowait)
    await watcher.call("ping")
    syncing = asyncio.create_task(server.sync(), name="test-sync")
    try:
        await asyncio.sleep(0.3)
        assert (await client.call("redaction_set"))["values"] == {"GH": VALUE}, "prefetched"
        await asyncio.to_thread(bao.write, "blindkey/development/GH", "rotated-remotely")
        deadline = time.monotonic() + 2
        while (await resolve(client, token, "GH"))["values"] != {"GH": "rotated-remotely"}:
            assert time.monotonic() < deadline, "a remote rotation shows within ttl/2"
            await asyncio.sleep(0.05)
        assert not pushes.empty(), "and the proxy is told to rebuild its redactor"
        # well past the 1s TTL, yet never cold: the sync renews before expiry
        for _ in range(15):
            assert server.state.view is not None
            assert server.state.view.lookup("development", "GH") == "rotated-remotely"
            await asyncio.sleep(0.1)
    finally:
        syncing.cancel()
        await watcher.close()


async def test_cli_rotation_and_delete_on_openbao_reach_the_broker_at_once(
    bao_broker: tuple[Bao, BrokerServer, BrokerClient, str], home: Paths
) -> None:
    bao, _, client, token = bao_broker
    ran = await acli(home.config_dir, "secrets", "set", "GH", stdin=VALUE)
    assert ran.returncode == 0, ran.stderr
    assert (await resolve(client, token, "GH"))["values"] == {"GH": VALUE}
    ran = await acli(home.config_dir, "secrets", "set", "GH", stdin="rotated-" + VALUE)
    assert ran.returncode == 0
    assert (await resolve(client, token, "GH"))["values"] == {"GH": "rotated-" + VALUE}
    assert (await acli(home.config_dir, "secrets", "delete", "GH")).returncode == 0
    assert (await resolve(client, token, "GH"))["denied"]["error"] == "unknown_secret"
    assert await asyncio.to_thread(bao.read, "blindkey/development/GH") is None

    await asyncio.to_thread(bao.seal)
    line = one_line_error(await acli(home.config_dir, "secrets", "set", "GH", stdin=VALUE))
    assert "is sealed; unseal it" in line
