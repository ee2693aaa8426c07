"""`blindkey exec`, the OpenClaw exec provider: protocol v1 exactly, values only for secrets
released to exec and only to the agent the broker knows, per-id errors, one audit record
per call written by the broker; a non-zero exit only for a request that is not one."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from blindkey.broker.agents import AgentStore
from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.approvals_helpers import acli, enrol
from tests.broker.conftest import Brokers, point_at
from tests.conftest import ROOT
from tests.proxy.conftest import set_secret_policy

VALUES = {
    "EXEC_KEY": "exec-Zx9Q7vLm2Kp4Rt8Wn3Yb6",
    "PROXY_ONLY": "proxy-Hc1Jd5Fs0Ga4eC39HqLy",
    "GATED": "gated-jWDarjtT1zdp7dc0000x",
    "OTHERS": "others-Mn9Bv8Cx7Za6Sd5Fg4H",
}


@dataclass
class Released:
    paths: Paths
    token: str

    async def run(
        self, *args: str, stdin: bytes, token: str | None = None
    ) -> tuple[int, bytes, bytes]:
        env = {**os.environ, "BLINDKEY_HOME": str(self.paths.config_dir)}
        env["BLINDKEY_AGENT_TOKEN"] = self.token if token is None else token
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "blindkey.cli",
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate(stdin)
        assert process.returncode is not None
        return process.returncode, out, err

    def records(self, event: str) -> list[dict[str, Any]]:
        audit = self.paths.audit_dir / "audit.jsonl"
        lines = audit.read_bytes().splitlines() if audit.exists() else []
        return [r for r in map(orjson.loads, lines) if r.get("event") == event]


def prepare(home: Paths) -> str:
    vault = FileVault(home)
    for name, value in VALUES.items():
        vault.set("development", name, value)
    set_secret_policy(home, "EXEC_KEY", release=["proxy", "exec", "env"])
    set_secret_policy(home, "GATED", release=["exec", "env"], tier="restricted")
    set_secret_policy(home, "OTHERS", release=["exec", "env"], agents=["someone-else"])
    return AgentStore(home.agents_file, home.lock_file).add("openclaw")


@pytest.fixture
async def released(home: Paths, brokers: Brokers) -> Released:
    token = prepare(home)
    point_at(home, brokers.socket)
    await brokers.start(home)
    return Released(home, token)


def request(*ids: str, **extra: Any) -> bytes:
    return orjson.dumps({"protocolVersion": 1, "provider": "blindkey", "ids": list(ids), **extra})


async def test_values_and_per_id_errors(released: Released) -> None:
    ids = ("EXEC_KEY", "PROXY_ONLY", "GATED", "OTHERS", "NOPE", "EXEC_KEY", "bad name")
    status, out, err = await released.run("exec", stdin=request(*ids))
    assert (status, err) == (0, b"")
    answer = orjson.loads(out)
    assert answer["protocolVersion"] == 1
    assert answer["values"] == {"EXEC_KEY": VALUES["EXEC_KEY"]}
    assert set(answer) == {"protocolVersion", "values", "errors"}
    messages = {k: v["message"] for k, v in answer["errors"].items()}
    assert all(set(v) == {"message"} for v in answer["errors"].values())
    assert messages["PROXY_ONLY"].startswith("secret_denied: secret PROXY_ONLY is not released")
    assert messages["GATED"].startswith("approval_required:")
    assert messages["OTHERS"].startswith("secret_denied: secret OTHERS is not bound to agent")
    assert messages["NOPE"].startswith("unknown_secret:")
    assert messages["bad name"].startswith("bad_request:")
    assert sorted(messages) == ["GATED", "NOPE", "OTHERS", "PROXY_ONLY", "bad name"]
    (record,) = released.records("exec")
    assert record["agent"] == "openclaw" and record["env"] == "development"
    assert record["secrets"] == ["EXEC_KEY"]
    assert record["refused"] == ["GATED", "NOPE", "OTHERS", "PROXY_ONLY", "bad name"]
    text = (released.paths.audit_dir / "audit.jsonl").read_text()
    assert not any(value in text for value in VALUES.values())


async def test_an_unknown_token_gets_every_id_refused(released: Released) -> None:
    status, out, _ = await released.run("exec", stdin=request("EXEC_KEY"), token="bk_wrong")
    assert status == 0
    answer = orjson.loads(out)
    assert answer["values"] == {}
    assert answer["errors"]["EXEC_KEY"]["message"].startswith("unauthenticated:")
    assert released.records("exec") == []  # nothing released to nobody in particular


async def test_no_token_names_the_variable_to_set(released: Released) -> None:
    status, out, _ = await released.run("exec", stdin=request("EXEC_KEY"), token="")
    assert status == 0
    message = orjson.loads(out)["errors"]["EXEC_KEY"]["message"]
    assert message.startswith("unauthenticated: BLINDKEY_AGENT_TOKEN is not set")
    assert "X-AS-" not in message


async def test_no_ids_is_an_empty_answer(released: Released) -> None:
    status, out, _ = await released.run("exec", stdin=request())
    assert (status, orjson.loads(out)) == (0, {"protocolVersion": 1, "values": {}, "errors": {}})


@pytest.mark.parametrize(
    ("stdin", "fragment"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"protocolVersion": 2, "ids": []}', "protocolVersion 2"),
        (b'{"protocolVersion": true, "ids": []}', "protocolVersion True"),
        (b'{"protocolVersion": 1}', "ids must be a list"),
        (b'{"protocolVersion": 1, "ids": ["A", 3]}', "ids must be a list of strings"),
        (b'{"protocolVersion": 1, "provider": 5, "ids": []}', "provider must be a string"),
    ],
)
async def test_an_invalid_request_exits_1_with_nothing_on_stdout(
    released: Released, stdin: bytes, fragment: str
) -> None:
    status, out, err = await released.run("exec", stdin=stdin)
    assert (status, out) == (1, b"")
    assert err.startswith(b"blindkey: exec: ") and fragment.encode() in err
    assert released.records("exec") == []


async def test_no_broker_is_an_error_per_id(home: Paths, brokers: Brokers) -> None:
    token = prepare(home)
    point_at(home, brokers.socket)  # nothing listens there
    status, out, _ = await Released(home, token).run("exec", stdin=request("EXEC_KEY", "X"))
    assert status == 0
    errors = orjson.loads(out)["errors"]
    assert sorted(errors) == ["EXEC_KEY", "X"]
    assert errors["X"]["message"].startswith("broker_unavailable: the secret broker is not running")


async def test_a_grant_lets_a_gated_secret_out(home: Paths, brokers: Brokers) -> None:
    """Tiers apply to exec as to the proxy: refused until a human approves, then released."""
    token = prepare(home)
    approver = enrol()  # before the broker runs: the CLI works on the broker's files
    point_at(home, brokers.socket)
    await brokers.start(home)
    released = Released(home, token)
    _, out, _ = await released.run("exec", stdin=request("GATED"))
    assert orjson.loads(out)["errors"]["GATED"]["message"].startswith("approval_required:")
    code, _, err = await acli("approve", "GATED", "--code", approver.code())
    assert code == 0, err
    _, out, _ = await released.run("exec", stdin=request("GATED"))
    assert orjson.loads(out)["values"] == {"GATED": VALUES["GATED"]}
