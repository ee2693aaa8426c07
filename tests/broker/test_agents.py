"""Agent identities: a token shown once and stored only as its SHA-256."""

from __future__ import annotations

import hashlib
import stat

import orjson
import pytest

from blindkey.broker.agents import TOKEN_PREFIX, AgentError, AgentStore, token_hash
from blindkey.config.paths import Paths


@pytest.fixture
def store(home: Paths) -> AgentStore:
    return AgentStore(home.agents_file, home.lock_file)


def test_token_is_returned_once_and_only_its_hash_is_stored(store: AgentStore) -> None:
    token = store.add("claude")

    assert token.startswith(TOKEN_PREFIX)
    assert len(token) >= len(TOKEN_PREFIX) + 43  # 256 random bits, urlsafe base64
    text = store.path.read_text()
    assert token not in text
    assert token[len(TOKEN_PREFIX) :] not in text
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert token_hash(token) == digest
    raw = orjson.loads(text)
    assert raw == {
        "claude": {"token_sha256": digest, "created": raw["claude"]["created"], "revoked": None}
    }
    record = store.load()["claude"]
    assert record.token_sha256 == digest
    assert record.revoked is None
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_every_token_is_different(store: AgentStore) -> None:
    tokens = {store.add(f"agent{i}") for i in range(10)}
    assert len(tokens) == 10
    hashes = {r.token_sha256 for r in store.load().values()}
    assert hashes == {token_hash(t) for t in tokens}


def test_duplicate_add_is_refused_and_keeps_the_first_token(store: AgentStore) -> None:
    store.add("claude")
    before = store.path.read_bytes()
    with pytest.raises(AgentError, match="already exists"):
        store.add("claude")
    assert store.path.read_bytes() == before


def test_revoke_marks_the_record_and_a_new_token_can_be_issued(store: AgentStore) -> None:
    first = store.add("claude")
    store.add("other")
    store.revoke("claude")

    agents = store.load()
    assert agents["claude"].revoked is not None
    assert agents["claude"].token_sha256 == token_hash(first)
    assert agents["other"].revoked is None

    revoked_at = agents["claude"].revoked
    store.revoke("claude")  # idempotent: the first revocation time stays
    assert store.load()["claude"].revoked == revoked_at

    second = store.add("claude")
    assert second != first
    assert store.load()["claude"].token_sha256 == token_hash(second)
    assert store.load()["claude"].revoked is None


def test_revoking_an_unknown_agent_is_an_error(store: AgentStore) -> None:
    with pytest.raises(AgentError, match="no agent named"):
        store.revoke("ghost")
    assert not store.path.exists()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "two words",
        " leading",
        "trailing ",
        "crlf\r\ninjected",
        "newline\n",
        "tab\tname",
        "-dash-first",
        ".dot-first",
        "slash/name",
        "a" * 65,
        "ünïcode",
        "null\x00byte",
    ],
)
def test_invalid_agent_names_are_refused(store: AgentStore, name: str) -> None:
    with pytest.raises(AgentError, match="invalid agent name"):
        store.add(name)
    assert not store.path.exists()


@pytest.mark.parametrize("name", ["a", "claude-code", "agent_1.v2", "_x", "9lives", "a" * 64])
def test_valid_agent_names_are_accepted(store: AgentStore, name: str) -> None:
    store.add(name)
    assert name in store.load()


def test_corrupt_agent_file_is_an_agent_error(store: AgentStore) -> None:
    store.path.write_text("{not json")
    with pytest.raises(AgentError, match="corrupt"):
        store.load()
