"""The proxy's error codes and the one function that turns a failure into a response."""

from __future__ import annotations

import itertools
import os

import orjson
from aiohttp import web

from blindkey.config.errors import BlindkeyError

STATUS = {
    "bad_request": 400,
    "unauthenticated": 401,
    "host_not_allowed": 403,
    "blocked_address": 403,
    "secret_denied": 403,
    "approval_required": 403,
    "approval_denied": 403,
    "forbidden_origin": 403,
    "unknown_secret": 404,
    "unknown_route": 404,
    "body_too_large": 413,
    "rate_limited": 429,
    "budget_exceeded": 429,
    "upstream_error": 502,
    "broker_unavailable": 503,
    "audit_unavailable": 503,
    "upstream_timeout": 504,
    "internal_error": 500,
}
REQUEST_ID_HEADER = "X-Blindkey-Request-Id"
PROXY_AUTH_STATUS = 407
PROXY_AUTHENTICATE = 'Basic realm="blindkey"'
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def next_request_id() -> str:
    """Unique across restarts (random per-process prefix) and cheap (a counter)."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


class ProxyError(BlindkeyError):
    """A refusal or failure with a code from INTERFACE.md's error table.

    Messages are written by blindkey itself; anything from upstream or a URL must have
    passed the redactor before it is put in one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        close: bool = False,
        fields: dict[str, str] | None = None,
        proxy_auth: bool = False,
        retry_after: int | None = None,
    ) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown error code {code}")
        super().__init__(message)
        self.code = code
        self.message = message
        # The connection cannot carry another request (e.g. a body was left half read).
        self.close = close
        # More of the error JSON (approval_required: the approval_id to hand a human).
        self.fields = fields
        # Proxy mode: the caller used blindkey as its proxy, so "who are you" is 407 and
        # says how to answer (Proxy-Authenticate).
        self.proxy_auth = proxy_auth
        # rate_limited: seconds until the call would pass (Retry-After).
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return PROXY_AUTH_STATUS if self.proxy_auth else STATUS[self.code]


def error_body(error: ProxyError, request_id: str, *, vendor: bool = False) -> bytes:
    """The error JSON. `vendor`: as vendors' SDKs read it (the OpenAI and Anthropic clients
    show `error.message`), for `/r/NAME` routes that SDKs call by base_url."""
    detail: dict[str, object] = {"message": error.message, "request_id": request_id}
    if error.fields:
        detail.update(error.fields)
    if vendor:
        inner = {"type": error.code, "code": error.code, **detail}
        return orjson.dumps({"type": "error", "error": inner, "request_id": request_id})
    return orjson.dumps({"error": error.code, **detail})


def error_response(error: ProxyError, request_id: str, *, vendor: bool = False) -> web.Response:
    body = error_body(error, request_id, vendor=vendor)
    response = web.Response(
        status=error.status,
        body=body,
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id},
    )
    if error.proxy_auth:
        response.headers["Proxy-Authenticate"] = PROXY_AUTHENTICATE
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if error.close:
        response.force_close()
    return response
