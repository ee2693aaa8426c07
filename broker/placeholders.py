"""Placeholders: what a program holds instead of a key in proxy mode.

`bk_` then 32 base32 characters (160 bits), after the secret's `placeholder_prefix` when one
is set, so a program that checks a key's shape (`sk-...`) still takes it. It is an HMAC of
the environment, the name and the value under a key of the broker's own: it holds no part of
the value, two environments or two secrets never share one, and it stays the same until the
value changes. The key is not the vault's, so a placeholder does not change when the store
does, and knowing placeholders gives nothing towards the vault key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Any, Protocol

from blindkey.broker.protocol import BrokerDenied
from blindkey.config.atomic import locked, write_atomic
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

MARK = "bk_"
BODY_CHARS = 32
KEY_BYTES = 32
# Where a placeholder may stand in a request: the mark, then exactly 32 base32 characters
# not followed by another (a longer run is not one of ours).
PATTERN = re.compile(rf"{MARK}[A-Z2-7]{{{BODY_CHARS}}}(?![A-Z2-7])")


class PlaceholderKeyError(BlindkeyError):
    """The placeholder key is unreadable or not the size it must be."""


def key_file(paths: Paths) -> Path:
    return paths.state_dir / "placeholder.key"


def ensure_key(paths: Paths) -> bytes:
    """The broker's placeholder key, made once (0600). A key of the wrong size is refused:
    replacing it would change every placeholder programs were given."""
    path = key_file(paths)
    with locked(paths.lock_file):
        if not path.exists():
            write_atomic(path, os.urandom(KEY_BYTES), mode=0o600)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise PlaceholderKeyError(f"cannot read {path}: {exc.strerror}") from None
    if len(key) != KEY_BYTES:
        raise PlaceholderKeyError(
            f"{path} holds {len(key)} bytes, not {KEY_BYTES}: restore it from a backup, or "
            "remove it to make a new one (every placeholder given out changes)"
        )
    return key


def placeholder(key: bytes, env: str, name: str, value: str, prefix: str = "") -> str:
    message = b"\0".join((env.encode(), name.encode(), value.encode("utf-8", "surrogatepass")))
    digest = hmac.new(key, message, hashlib.sha256).digest()
    body = base64.b32encode(digest[:20]).decode("ascii")  # 160 bits: 32 characters, no "="
    return f"{prefix}{MARK}{body}"


def placeholders(
    key: bytes, env: str, values: dict[str, str], prefixes: dict[str, str]
) -> dict[str, str]:
    """name -> placeholder for every value of one environment."""
    return {
        name: placeholder(key, env, name, value, prefixes.get(name, ""))
        for name, value in values.items()
    }


def find(text: str) -> list[str]:
    """The placeholder bodies (mark included, prefix not) that appear in `text`."""
    return PATTERN.findall(text)


class PlaceholderSource(Protocol):
    """What the broker's state offers for placeholders (BrokerState)."""

    generation: int

    def environment_values(self, env: str) -> dict[str, str]: ...

    def placeholder_prefixes(self) -> dict[str, str]: ...


def placeholders_op(
    state: PlaceholderSource, key: bytes, request: dict[str, Any]
) -> dict[str, Any]:
    """The broker's `placeholders` op: every placeholder of one environment, so proxy mode
    can tell which secret a placeholder stands for and refuse one headed for a host its
    secret is not bound to. Placeholders are not values: nothing here is released."""
    env = request.get("env")
    if not isinstance(env, str) or not env:
        raise BrokerDenied("bad_request", "placeholders needs the environment (env)")
    values = state.environment_values(env)
    return {
        "id": request.get("id"),
        "generation": state.generation,
        "placeholders": placeholders(key, env, values, state.placeholder_prefixes()),
    }
