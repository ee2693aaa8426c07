"""Who may use the page: the holder of the one-time login link, then of its session cookie.

The link is printed once, works once and only for LOGIN_TTL; it opens a session whose
cookie is HttpOnly and SameSite=Strict (no other site's page or request carries it) and
whose CSRF token every POST must repeat. Tokens are kept hashed: a memory dump of a tab's
cookie jar is not what this process keeps.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOGIN_TTL = 120.0
SESSION_TTL = 8 * 3600.0
COOKIE = "blindkey_ui"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass
class Session:
    csrf: str
    expires: float
    # Messages shown once, on the next page (the outcome of a POST that redirected).
    flash: list[tuple[str, str]] = field(default_factory=list)

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    def say(self, kind: str, text: str) -> None:
        self.flash.append((kind, text))

    def take_flash(self) -> list[tuple[str, str]]:
        shown, self.flash = self.flash, []
        return shown


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.login_token = secrets.token_urlsafe(32)
        self._login: bytes | None = _digest(self.login_token)
        self._login_expires = clock() + LOGIN_TTL
        self._sessions: dict[bytes, Session] = {}

    def login(self, token: str | None) -> tuple[str, Session] | None:
        """A new session (its cookie value and itself) for the one-time token, else None.
        The token works once: after that, and after LOGIN_TTL, it opens nothing."""
        if token is None or self._login is None or self.clock() > self._login_expires:
            return None
        if not hmac.compare_digest(_digest(token), self._login):
            return None
        self._login = None
        cookie = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=self.clock() + SESSION_TTL)
        self._sessions[_digest(cookie)] = session
        return cookie, session

    def find(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        key = _digest(cookie)
        session = self._sessions.get(key)
        if session is not None and self.clock() > session.expires:
            del self._sessions[key]
            return None
        return session
