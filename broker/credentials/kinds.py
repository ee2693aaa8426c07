"""`secrets set --kind`: what each kind of secret needs beside its stored value, checked
before anything is stored, and written into `[secrets.NAME]` (a kind's keys replace the
previous kind's)."""

from __future__ import annotations

from typing import Any

from blindkey.broker.credentials.aws import KIND as KIND_AWS
from blindkey.broker.credentials.aws import REGION, ROLE_ARN, stored_value
from blindkey.config.errors import UsageError

# What `secrets set --kind` needs beside the stored value, by kind.
KIND_KEYS = {
    "value": (),
    "oauth2": ("token_url", "client_id"),
    "github-app": ("app_id", "installation_id"),
    KIND_AWS: (),
}
OPTIONAL_KEYS = ("scope", "grant", "region", "role_arn")


def check_kind(kind: str | None, credential: dict[str, str], release: list[str]) -> None:
    if kind is None:
        if credential:
            raise UsageError(f"--{next(iter(credential)).replace('_', '-')} needs --kind")
        return
    missing = [k for k in KIND_KEYS[kind] if not credential.get(k)]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise UsageError(f"--kind {kind} needs {flags}")
    if credential.get("role_arn") and kind != KIND_AWS:
        raise UsageError("--role-arn is for --kind aws secrets")
    if credential.get("role_arn") and not ROLE_ARN.match(credential["role_arn"]):
        raise UsageError(
            f"--role-arn {credential['role_arn'][:100]!r} is not an IAM role's ARN "
            "(arn:aws:iam::123456789012:role/NAME)"
        )
    if kind != "value" and set(release) - {"proxy"}:
        raise UsageError(
            f"a {kind} secret is for the proxy only, never handed out: --release proxy"
        )


def set_kind(
    section: Any, kind: str | None, credential: dict[str, str], region: str | None
) -> None:
    """`--kind` and its keys, `--region`: what the value is, and what computing a credential
    needs. The keys of the previous kind go: a table must not say oauth2 with a stale app_id."""
    if kind is not None:
        for keys in (*KIND_KEYS.values(), OPTIONAL_KEYS):
            for key in keys:
                section.pop(key, None)
        if kind == "value":
            section.pop("kind", None)
            return
        section["kind"] = kind
        for key, value in credential.items():
            section[key] = value
    if region:
        section["region"] = region


def checked_value(kind: str, region: str | None, value: str) -> str:
    """The value to store for its kind: aws keys are checked and stored in canonical form."""
    if region and kind != KIND_AWS:
        raise UsageError("--region is for --kind aws secrets")
    if region and not REGION.match(region):
        raise UsageError(f"--region {region[:64]!r} is not an AWS region name (eu-west-1)")
    return stored_value(value) if kind == KIND_AWS else value
