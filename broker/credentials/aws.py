"""`aws` secrets: the value is a JSON object of AWS keys, checked once when it is stored and
read again wherever it is used (the proxy signs with it; the redactor learns its parts).

The secret access key only ever keys an HMAC: it is never put into a request. Its parts are
redacted one by one, since an upstream that echoes a key echoes a part, never the object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from blindkey.config.errors import BlindkeyError

KIND = "aws"
# AWS documents access key ids as 16 to 128 word characters (AKIA..., ASIA...).
_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}\Z")
REGION = re.compile(r"^[a-z0-9-]{1,64}\Z")
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}\Z")
_FIELDS = ("access_key_id", "secret_access_key", "session_token")
_MIN_SECRET = 16


class AwsKeysError(BlindkeyError):
    """A value that is not a usable set of AWS keys (the message never holds a value)."""


@dataclass(frozen=True)
class AwsKeys:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    def to_value(self) -> str:
        """The stored form: canonical JSON, so one set of keys is always one value."""
        fields = {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}
        if self.session_token:
            fields["session_token"] = self.session_token
        return orjson.dumps(fields).decode("utf-8")


def parse_keys(text: str) -> AwsKeys:
    """The keys of an `aws` value, or AwsKeysError saying what is wrong with its shape."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise AwsKeysError(
            'an aws secret is a JSON object: {"access_key_id": ..., "secret_access_key": ...'
            '[, "session_token": ...]}'
        ) from None
    if not isinstance(document, dict):
        raise AwsKeysError("an aws secret is a JSON object, not a list or a string")
    unknown = sorted(set(document) - set(_FIELDS))
    if unknown:
        raise AwsKeysError(f"unknown fields in the aws secret: {', '.join(unknown)}")
    if not all(isinstance(document.get(f, ""), str) for f in _FIELDS):
        raise AwsKeysError("every field of an aws secret is a string")
    key_id = document.get("access_key_id", "")
    secret = document.get("secret_access_key", "")
    if not _KEY_ID.match(key_id):
        raise AwsKeysError("access_key_id must be 16 to 128 capital letters and digits (AKIA...)")
    if len(secret) < _MIN_SECRET or any(ch.isspace() for ch in secret):
        raise AwsKeysError(
            f"secret_access_key must be at least {_MIN_SECRET} characters, without spaces"
        )
    token = document.get("session_token", "")
    if any(ch in token for ch in "\r\n\0"):
        raise AwsKeysError("session_token must be one line")
    return AwsKeys(key_id, secret, token)


def maybe_keys(value: str) -> AwsKeys | None:
    """The keys when `value` is an aws value; None for any other value."""
    if not value.startswith("{") or "secret_access_key" not in value:
        return None
    try:
        return parse_keys(value)
    except AwsKeysError:
        return None


def redaction_parts(values: dict[str, str]) -> dict[str, str]:
    """`values` and, for each aws value, its parts under `NAME.part`: an answer that
    echoes the key id or the session token is redacted like any value."""
    parts = dict(values)
    for name, value in values.items():
        keys = maybe_keys(value)
        if keys is None:
            continue
        parts[f"{name}.access_key_id"] = keys.access_key_id
        parts[f"{name}.secret_access_key"] = keys.secret_access_key
        if keys.session_token:
            parts[f"{name}.session_token"] = keys.session_token
    return parts


def stored_value(text: str) -> str:
    """What `secrets set --kind aws` stores for the JSON it was given: checked, canonical."""
    return parse_keys(text.strip()).to_value()
