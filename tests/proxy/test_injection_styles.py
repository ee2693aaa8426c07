"""One call per injection style against a loopback echo upstream; the echo comes back redacted."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator

import orjson

from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.proxy.conftest import BASIC, SECRET, Env, open_env


def _echo(body: bytes) -> dict[str, object]:
    data = orjson.loads(body)
    assert isinstance(data, dict)
    return data


def _headers(echo: dict[str, object]) -> dict[str, str]:
    pairs = echo["headers"]
    assert isinstance(pairs, list)
    return {k: v for k, v in pairs}


async def test_bearer(env: Env) -> None:
    status, headers, body = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert status == 200
    echo = _echo(body)
    assert _headers(echo)["Authorization"] == "Bearer [REDACTED:GITHUB_TOKEN]"
    assert headers["X-Echo-Authorization"] == "Bearer [REDACTED:GITHUB_TOKEN]"
    assert SECRET.encode() not in body


async def test_basic(env: Env) -> None:
    status, _, body = await env.call(headers=env.headers(X_AS_Inject_Basic="BASIC_PAIR"))
    assert status == 200
    assert _headers(_echo(body))["Authorization"] == "Basic [REDACTED:BASIC_PAIR]"
    assert base64.b64encode(BASIC.encode()) not in body


async def test_header_keeps_the_suffix_case(env: Env) -> None:
    headers = env.headers(**{"X-AS-Inject-Header-X-Api-KEY": "GITHUB_TOKEN"})
    status, _, body = await env.call(headers=headers)
    assert status == 200
    sent = _echo(body)["headers"]
    assert isinstance(sent, list)
    assert ["X-Api-KEY", "[REDACTED:GITHUB_TOKEN]"] in sent


async def test_query_added_and_replaced(env: Env) -> None:
    headers = env.headers(
        "/echo?keep=1&api_key=agent-guess", **{"X-AS-Inject-Query-api_key": "GITHUB_TOKEN"}
    )
    status, _, body = await env.call(headers=headers)
    assert status == 200
    path = _echo(body)["path"]
    assert path == "/echo?keep=1&api_key=[REDACTED:GITHUB_TOKEN]"


async def test_json_body_path_created(env: Env) -> None:
    headers = env.headers(**{"X-AS-Inject-Body-auth.credentials.Token": "GITHUB_TOKEN"})
    headers["Content-Type"] = "application/json"
    status, _, body = await env.call(
        "POST", headers=headers, data=b'{"auth": {"user": "me"}, "n": 1}'
    )
    assert status == 200
    sent = orjson.loads(str(_echo(body)["body"]))
    assert sent == {
        "auth": {"user": "me", "credentials": {"Token": "[REDACTED:GITHUB_TOKEN]"}},
        "n": 1,
    }


async def test_form_field(env: Env) -> None:
    headers = env.headers(**{"X-AS-Inject-Form-client_secret": "GITHUB_TOKEN"})
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    status, _, body = await env.call("POST", headers=headers, data=b"grant_type=client_credentials")
    assert status == 200
    assert (
        _echo(body)["body"] == "grant_type=client_credentials&client_secret=[REDACTED:GITHUB_TOKEN]"
    )


async def test_method_override_and_stripped_headers(env: Env) -> None:
    headers = env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN", X_AS_Method="DELETE")
    headers.update(
        {
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Proxy-Authorization": "x",
            "X-AS-Unknown": "leak?",
            "X-Keep": "yes",
        }
    )
    status, _, body = await env.call("POST", headers=headers)
    assert status == 200
    echo = _echo(body)
    assert echo["method"] == "DELETE"
    sent = _headers(echo)
    lowered = {k.lower() for k in sent}
    assert not any(k.startswith("x-as-") for k in lowered)
    assert "x-drop-me" not in lowered and "proxy-authorization" not in lowered
    assert sent["X-Keep"] == "yes"
    assert sent["Host"] == f"127.0.0.1:{env.upstream_port}"


async def test_streamed_request_body_passes_unchanged(env: Env) -> None:
    payload = bytes(range(256)) * 1024  # not UTF-8, not JSON: must arrive byte for byte
    digest = hashlib.sha256(payload).hexdigest()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 10_000):
            yield payload[start : start + 10_000]

    for body in (payload, chunked()):
        headers = env.headers("/echo", X_AS_Inject_Bearer="GITHUB_TOKEN")
        status, response_headers, _ = await env.call("PUT", headers=headers, data=body)
        assert status == 200
        assert response_headers["X-Echo-Body-Sha256"] == digest
    await env.server.audit.flush()
    lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["bytes_in"] for line in lines[-2:]] == [len(payload)] * 2


async def test_request_id_matches_the_audit_record(env: Env) -> None:
    status, headers, _ = await env.call(headers=env.headers(X_AS_Inject_Bearer="GITHUB_TOKEN"))
    assert status == 200
    request_id = headers["X-Blindkey-Request-Id"]
    await env.server.audit.flush()
    lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
    record = orjson.loads(lines[-1])
    assert record["request_id"] == request_id
    assert record["decision"] == "allowed"
    assert record["status"] == 200
    assert record["secrets"] == ["GITHUB_TOKEN"]
    assert record["styles"] == ["bearer"]
    assert record["agent"] == "tester"
    assert record["env"] == "development"
    assert record["redactions"] >= 2


async def test_use_of_a_short_secret_is_marked_in_the_audit(env: Env) -> None:
    from blindkey.broker.vault import FileVault
    from tests.proxy.conftest import eventually_status, set_secret_policy

    set_secret_policy(env.paths, "PIN", allow_short=True)
    await env.server.reload()
    FileVault(env.paths).set("development", "PIN", "4321")
    headers = env.headers(**{"X-AS-Inject-Header-X-Pin": "PIN"})
    await eventually_status(env, 200, headers)
    await env.server.audit.flush()
    lines = (env.paths.audit_dir / "audit.jsonl").read_bytes().splitlines()
    record = orjson.loads(lines[-1])
    assert record["short_secrets"] == ["PIN"]
    assert record["secrets"] == ["PIN"]


async def test_non_ascii_values_go_out_as_utf8_and_come_back_redacted(home: Paths) -> None:
    # Latin-1 can carry the first, not the second: both go out as UTF-8 bytes.
    values = {"LATIN": "pässwörd-ÿ-0123456789", "WIDE": "ключ-€-密钥-0123456789"}

    def store(_: object) -> None:
        for name, value in values.items():
            FileVault(home).set("development", name, value)

    async with open_env(home, prepare=store) as env:
        for name, value in values.items():
            for style in ("X_AS_Inject_Bearer", "X-AS-Inject-Header-X-Api-Key"):
                status, headers, body = await env.call(headers=env.headers(**{style: name}))
                assert status == 200, body
                sent = _headers(_echo(body))
                assert value.encode() not in body and value not in str(headers)
                if style.endswith("Bearer"):
                    digest = hashlib.sha256(f"Bearer {value}".encode()).hexdigest()
                    assert headers["X-Echo-Authorization-Sha256"] == digest
                    assert sent["Authorization"] == f"Bearer [REDACTED:{name}]"
                else:
                    assert sent["X-Api-Key"] == f"[REDACTED:{name}]"
