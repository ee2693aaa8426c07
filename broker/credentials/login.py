"""`blindkey oauth login`: a refresh token into blindkey without the user pasting it.

The authorisation-code flow of a native app (RFC 8252): PKCE with S256 (RFC 7636), the
redirect to a loopback listener on 127.0.0.1 at a port the system picks, a `state` that
the answer must carry back (anything else is refused: a page that calls the listener
cannot plant its own code). The device flow (RFC 8628) is in device.py. Both run in the
CLI, as the user, before anything is stored; the refresh token goes from the token
endpoint's answer straight into the store, never to the terminal.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import ipaddress
import secrets
import threading
import time
import urllib.error
import urllib.request
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from blindkey.config.errors import BlindkeyError

CALLBACK_PATH = "/callback"
HTTP_TIMEOUT = 30.0
DONE_PAGE = b"<!doctype html><title>blindkey</title><p>blindkey has the answer: close this tab."
Announce = Callable[[str], None]


class LoginError(BlindkeyError):
    """The authorisation server refused, answered nonsense, or nobody answered in time."""


@dataclass(frozen=True)
class Client:
    """The OAuth client to log in as, and the endpoints of its authorisation server."""

    token_url: str
    client_id: str
    auth_url: str = ""
    scope: str = ""
    device_url: str = ""


def check_endpoint(flag: str, url: str) -> str:
    """https, or http to a loopback address only: a code or token sent in clear over a
    network could be read on the way."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return url
    raise LoginError(f"{flag} {url[:200]!r}: an https:// URL (http:// only on loopback)")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a token endpoint that redirects is answered as it is: an error


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_form(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST a form, as RFC 6749 and 8628 send it; (status, the JSON object answered)."""
    # Only the http(s) URLs check_endpoint let through come here.
    request = urllib.request.Request(  # noqa: S310
        url,
        data=urlencode(form).encode(),
        headers={"Accept": "application/json",
                 "Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )  # fmt: skip
    try:
        with _OPENER.open(request, timeout=HTTP_TIMEOUT) as answer:
            status, body = answer.status, answer.read(1 << 20)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(1 << 20)
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LoginError(f"cannot reach {_origin(url)}: {reason}") from None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise LoginError(f"{_origin(url)} answered {status} with no JSON object")
    return status, parsed


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def refused(url: str, status: int, answer: dict[str, Any]) -> LoginError:
    """The server's own error (RFC 6749 5.2), in its words, shortened."""
    error = str(answer.get("error") or f"status {status}")[:100]
    description = str(answer.get("error_description") or "")[:300]
    said = f"{error}: {description}" if description else error
    return LoginError(f"{_origin(url)} answered {status} {said}")


def refresh_token_of(url: str, status: int, answer: dict[str, Any]) -> str:
    if status != 200 or "error" in answer:
        raise refused(url, status, answer)
    token = answer.get("refresh_token")
    if not isinstance(token, str) or not token:
        raise LoginError(
            f"{_origin(url)} gave no refresh token: blindkey needs one to keep access "
            "(many servers give it only for offline access: a scope such as offline_access, "
            "or access_type=offline in the authorisation URL)"
        )
    return token


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge): 64 random bytes, base64url, as RFC 7636 4.1-4.2."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization_url(client: Client, redirect_uri: str, challenge: str, state: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
    }
    if client.scope:
        query["scope"] = client.scope
    joiner = "&" if urlsplit(client.auth_url).query else "?"
    return client.auth_url + joiner + urlencode(query)


@dataclass
class _Answer:
    params: dict[str, str] | None = None


class _Listener(http.server.HTTPServer):
    answer: _Answer


class _Callback(http.server.BaseHTTPRequestHandler):
    """The loopback redirect: the first request to CALLBACK_PATH is the answer."""

    server: _Listener

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH or self.server.answer.params is not None:
            self.send_error(404)
            return
        query = parse_qs(parts.query, keep_blank_values=True)
        self.server.answer.params = {k: v[0] for k, v in query.items()}
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(DONE_PAGE)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(DONE_PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the browser's requests are not the user's business on the terminal


def _wait_for_answer(listener: _Listener, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while listener.answer.params is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LoginError(
                f"no answer from the browser within {timeout:.0f} s: nothing stored "
                "(run the command again, or use --device-url on a machine without a browser)"
            )
        listener.timeout = min(left, 1.0)
        listener.handle_request()
    return listener.answer.params


def _open_browser(url: str) -> None:
    # webbrowser may block while a text-mode browser runs; the listener must not wait on it.
    threading.Thread(target=webbrowser.open, args=(url,), name="browser", daemon=True).start()


def authorization_code(
    client: Client, announce: Announce, *, open_browser: bool, timeout: float
) -> str:
    """The refresh token from the authorisation-code flow with PKCE and a loopback redirect."""
    check_endpoint("--auth-url", client.auth_url)
    check_endpoint("--token-url", client.token_url)
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    listener = _Listener(("127.0.0.1", 0), _Callback)
    listener.answer = _Answer()
    try:
        redirect_uri = f"http://127.0.0.1:{listener.server_address[1]}{CALLBACK_PATH}"
        url = authorization_url(client, redirect_uri, challenge, state)
        announce(f"Open this URL in a browser and allow access:\n{url}")
        if open_browser:
            _open_browser(url)
        params = _wait_for_answer(listener, timeout)
    finally:
        listener.server_close()
    if not secrets.compare_digest(params.get("state", ""), state):
        raise LoginError(
            "the answer at the loopback redirect did not carry this login's state: it was not "
            "for this login (another page called it?); nothing stored"
        )
    if "error" in params:
        said = params["error"][:100]
        if params.get("error_description"):
            said += f": {params['error_description'][:300]}"
        raise LoginError(f"the authorisation server refused: {said}; nothing stored")
    code = params.get("code", "")
    if not code:
        raise LoginError("the loopback redirect carried no code; nothing stored")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": client.client_id,
        "code_verifier": verifier,
    }
    return refresh_token_of(client.token_url, *post_form(client.token_url, form))
