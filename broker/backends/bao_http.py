"""A small, blocking OpenBao/Vault HTTP client: one kept-alive connection, token or AppRole
login, token renewal, and every failure turned into one line that says what to do."""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from blindkey.broker.backends import BackendError, BackendUnavailable
from blindkey.config.stores import OpenBaoSettings

TIMEOUT = 3.0
# Renew once a third of the token's life is left.
RENEW_FRACTION = 1 / 3
Reply = tuple[int, dict[str, Any]]


def _read_secret_file(path: str, what: str) -> str:
    try:
        text = Path(path).expanduser().read_text("utf-8").strip()
    except FileNotFoundError as exc:
        raise BackendError(f"{what} {path}: no such file") from exc
    except PermissionError as exc:
        raise BackendError(f"{what} {path}: permission denied") from exc
    if not text:
        raise BackendError(f"{what} {path} is empty")
    return text


class BaoHttp:
    def __init__(self, settings: OpenBaoSettings, timeout: float = TIMEOUT) -> None:
        self.settings = settings
        self.address = settings.address
        parts = urlsplit(settings.address)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires: float | None = None  # monotonic; None: never expires
        self._ttl = 0.0
        self._renewable = False

    # --- transport ---------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                if self._context is None:
                    context = ssl.create_default_context()
                    if self.settings.ca_file:
                        context.load_verify_locations(str(Path(self.settings.ca_file).expanduser()))
                    self._context = context
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._conn

    def _send(self, method: str, path: str, body: object, token: str | None) -> Reply:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Vault-Token"] = token
        if self.settings.namespace:
            headers["X-Vault-Namespace"] = self.settings.namespace
        payload = None if body is None else orjson.dumps(body)
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except ssl.SSLError as exc:
                self.close()
                raise BackendUnavailable(
                    f"OpenBao at {self.address}: TLS failed ({exc.reason or exc}); "
                    "point ca_file at the CA that signed the server's certificate"
                ) from exc
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                # A kept-alive connection the server closed: try once on a fresh one.
                if reused and attempt == 1:
                    continue
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                raise BackendUnavailable(
                    f"OpenBao at {self.address} is unreachable ({reason}); check the "
                    "address and that the server is running"
                ) from exc
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = {}
        return response.status, data if isinstance(data, dict) else {}

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # --- errors ------------------------------------------------------------------------

    def failure(self, status: int, data: dict[str, Any], what: str) -> BackendError:
        errors = data.get("errors") or []
        text = "; ".join(str(e).splitlines()[0] for e in errors if e) or f"HTTP {status}"
        if status == 503 and "sealed" in text.lower():
            return BackendUnavailable(
                f"OpenBao at {self.address} is sealed; unseal it (`bao operator unseal`) "
                "and blindkey picks it up again"
            )
        if status == 403:
            return BackendUnavailable(
                f"OpenBao at {self.address} refused to {what} (permission denied); give the "
                "token a policy allowing it, or check that it has not expired"
            )
        if status >= 500:
            return BackendUnavailable(f"OpenBao at {self.address} failed to {what}: {text}")
        return BackendError(f"OpenBao at {self.address} refused to {what}: {text}")

    # --- authentication ----------------------------------------------------------------

    def _configured_token(self) -> str:
        if self.settings.token_file:
            return _read_secret_file(self.settings.token_file, "token_file")
        for variable in ("BAO_TOKEN", "VAULT_TOKEN"):
            value = os.environ.get(variable, "").strip()
            if value:
                return value
        raise BackendError(
            "no OpenBao token: set token_file, or BAO_TOKEN (or VAULT_TOKEN) in the "
            'environment of blindkey, or use auth = "approle"'
        )

    def _adopt(self, token: str, ttl: float, renewable: bool) -> None:
        self._token = token
        self._ttl = ttl
        self._renewable = renewable
        self._expires = time.monotonic() + ttl if ttl > 0 else None

    def _login(self) -> None:
        if self.settings.auth == "approle":
            secret_id = _read_secret_file(self.settings.secret_id_file, "secret_id_file")
            body = {"role_id": self.settings.role_id, "secret_id": secret_id}
            status, data = self._send("POST", "/v1/auth/approle/login", body, None)
            if status != 200 or not isinstance(data.get("auth"), dict):
                raise self.failure(status, data, "log in with AppRole")
            auth = data["auth"]
            self._adopt(
                str(auth["client_token"]),
                float(auth.get("lease_duration") or 0),
                bool(auth.get("renewable")),
            )
            return
        token = self._configured_token()
        status, data = self._send("GET", "/v1/auth/token/lookup-self", None, token)
        if status != 200:
            raise self.failure(status, data, "accept the token (lookup-self)")
        info = data.get("data") or {}
        self._adopt(token, float(info.get("ttl") or 0), bool(info.get("renewable")))

    def _renew(self) -> None:
        status, data = self._send("POST", "/v1/auth/token/renew-self", {}, self._token)
        auth = data.get("auth") if status == 200 else None
        ttl = float(auth.get("lease_duration") or 0) if isinstance(auth, dict) else 0.0
        if ttl > 0:
            self._adopt(str(self._token), ttl, bool(auth and auth.get("renewable")))
        else:
            # At its max TTL or refused: used as it is until it expires; then the
            # server's 403 says so.
            self._renewable = False

    def _current_token(self) -> str:
        if self._token is None:
            self._login()
        elif self._expires is not None:
            left = self._expires - time.monotonic()
            if left < self._ttl * RENEW_FRACTION:
                # AppRole logs in afresh: no max TTL to run into, no renewal to track.
                if self.settings.auth == "approle":
                    self._login()
                elif self._renewable:
                    self._renew()
        assert self._token is not None
        return self._token

    def call(self, method: str, path: str, body: object = None) -> Reply:
        with self._lock:
            status, data = self._send(method, path, body, self._current_token())
            if status == 403 and self.settings.auth == "approle":
                # The token may have been revoked or expired early: log in again, once.
                self._login()
                status, data = self._send(method, path, body, self._token)
            return status, data

    def seconds_left(self) -> float | None:
        """Until the token expires (None: no expiry, or not logged in yet)."""
        return None if self._expires is None else self._expires - time.monotonic()
