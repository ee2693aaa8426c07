"""`blindkey exec`: the OpenClaw exec provider, protocol v1, on stdin and stdout.

    in:  {"protocolVersion": 1, "provider": P, "ids": [NAME, ...]}
    out: {"protocolVersion": 1, "values": {NAME: VALUE}, "errors": {NAME: {"message": ...}}}

Only secrets whose `release` includes `exec`, for the agent whose token is in
`BLINDKEY_AGENT_TOKEN`, with tiers applied; the broker decides and writes the record. A
refusal, an unknown name, even a broker that is down, is an error of each id it concerns:
the exit status is non-zero only when stdin is not a valid request.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson

from blindkey.broker.link import connect
from blindkey.broker.protocol import BrokerDenied, BrokerUnavailable
from blindkey.broker.release import release
from blindkey.config.errors import BlindkeyError
from blindkey.config.paths import Paths

PROTOCOL_VERSION = 1
MAX_REQUEST = 2**20
TOKEN_VARIABLE = "BLINDKEY_AGENT_TOKEN"  # noqa: S105 - the name of a variable


def agent_token() -> str | None:
    return os.environ.get(TOKEN_VARIABLE, "").strip() or None


def denial_text(exc: BrokerDenied) -> str:
    """The broker's refusal as a command run by an agent should say it: a missing token is
    a variable to set (the broker speaks of the header the proxy's callers send)."""
    if exc.code == "unauthenticated" and agent_token() is None:
        return (
            f"unauthenticated: {TOKEN_VARIABLE} is not set; export the token that "
            "`blindkey agent add NAME` printed"
        )
    return f"{exc.code}: {exc}"


def parse_request(data: bytes) -> list[str]:
    """The ids of a v1 request, in order, once each; BlindkeyError when it is none."""
    try:
        request = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BlindkeyError(f"exec: stdin is not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise BlindkeyError("exec: the request must be a JSON object")
    version = request.get("protocolVersion")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise BlindkeyError(f"exec: protocolVersion {version!r} is not supported (only 1)")
    if "provider" in request and not isinstance(request["provider"], str):
        raise BlindkeyError("exec: provider must be a string")
    ids = request.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise BlindkeyError("exec: ids must be a list of strings")
    return list(dict.fromkeys(ids))


def resolve(paths: Paths, ids: list[str]) -> dict[str, Any]:
    values: dict[str, str] = {}
    errors: dict[str, dict[str, str]] = {}
    if ids:
        try:
            with connect(paths) as link:
                answer = release(link, agent_token(), ids, "exec", None)
        except BrokerDenied as exc:  # the token, or a broker that serves nothing yet
            errors = {i: {"message": denial_text(exc)} for i in ids}
        except BrokerUnavailable as exc:
            errors = {i: {"message": f"broker_unavailable: {exc}"} for i in ids}
        else:
            values = {i: answer.values[i] for i in ids if i in answer.values}
            errors = {
                i: {"message": f"{e['error']}: {e['message']}"} for i, e in answer.errors.items()
            }
            for missing in (i for i in ids if i not in values and i not in errors):
                errors[missing] = {"message": "broker_unavailable: no answer for this id"}
    return {"protocolVersion": PROTOCOL_VERSION, "values": values, "errors": errors}


def cmd_exec(paths: Paths, args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read(MAX_REQUEST + 1)
    if len(data) > MAX_REQUEST:
        raise BlindkeyError(f"exec: the request exceeds {MAX_REQUEST} bytes")
    response = resolve(paths, parse_request(data))
    sys.stdout.buffer.write(orjson.dumps(response) + b"\n")
    sys.stdout.flush()
    return 0
