"""The page's guard, layer by layer, against the real server on 127.0.0.1 port 0: each
check refuses on its own, with every other check passed (a valid session, the right Host,
the right token), so removing any one of them fails a test here."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from blindkey.config.paths import Paths
from blindkey.ui.server import start
from blindkey.ui.session import LOGIN_TTL, Sessions
from tests.approvals_helpers import enrol

CSRF = re.compile(r'<meta name=csrf content="([^"]+)">')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Page:
    runner: web.AppRunner
    port: int
    sessions: Sessions
    clock: Clock
    http: aiohttp.ClientSession

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def host(self) -> dict[str, str]:
        return {"Host": f"localhost:{self.port}"}

    async def get(self, path: str, **headers: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(
            self.base + path, headers={**self.host(), **headers}, allow_redirects=False
        ) as answer:
            return answer.status, await answer.text(), answer

    async def post(self, path: str, data: dict[str, str], **headers: str) -> tuple[int, str]:
        async with self.http.post(
            self.base + path, data=data, headers={**self.host(), **headers},
            allow_redirects=False,
        ) as answer:  # fmt: skip
            return answer.status, await answer.text()

    async def login(self) -> tuple[str, str]:
        """A session: its cookie header and its CSRF token."""
        status, _, answer = await self.get(f"/login?token={self.sessions.login_token}")
        assert status == 303
        cookie = answer.cookies["blindkey_ui"]
        header = f"blindkey_ui={cookie.value}"
        _, page, _ = await self.get("/approvals", Cookie=header)
        found = CSRF.search(page)
        assert found is not None
        return header, found.group(1)


@pytest.fixture
async def page(home: Paths) -> AsyncIterator[Page]:
    clock = Clock()
    sessions = Sessions(clock)
    runner, port = await start(home, sessions, 0)
    # No cookie jar: each request carries exactly the cookie the test gives it.
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    try:
        yield Page(runner, port, sessions, clock, http)
    finally:
        await http.close()
        await runner.cleanup()


async def test_listens_on_loopback_only(page: Page) -> None:
    assert [address[0] for address in page.runner.addresses] == ["127.0.0.1"]


async def test_the_session_cookie_and_the_headers(page: Page) -> None:
    status, _, answer = await page.get(f"/login?token={page.sessions.login_token}")
    assert status == 303 and answer.headers["Location"] == "/approvals"
    cookie = answer.cookies["blindkey_ui"]
    assert cookie["httponly"] is True and cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert answer.headers["X-Frame-Options"] == "DENY"


async def test_the_link_works_once_and_not_late(page: Page, home: Paths) -> None:
    token = page.sessions.login_token
    assert (await page.get("/login?token=wrong"))[0] == 403
    assert (await page.get(f"/login?token={token}"))[0] == 303
    status, text, _ = await page.get(f"/login?token={token}")
    assert status == 403 and "used already or has expired" in text
    late = Sessions(page.clock)
    page.clock.now += LOGIN_TTL + 1
    assert late.login(late.login_token) is None


async def test_no_session_no_page(page: Page) -> None:
    for path in ("/approvals", "/grants", "/events/calls", "/static/ui.js"):
        status, text, _ = await page.get(path)
        assert status == 401 and "one-time login link" in text, path
    status, _ = await page.post("/approvals/deny", {"request": "ap_0000000000000000"})
    assert status == 401


async def test_a_post_needs_the_sessions_csrf_token(page: Page) -> None:
    cookie, csrf = await page.login()
    form = {"secret": "GH", "env": "development", "agent": "*"}
    for given in ({}, {"csrf": "x" * len(csrf)}, {"csrf": ""}):
        status, text = await page.post("/grants/revoke", {**form, **given}, Cookie=cookie)
        assert status == 403 and "CSRF" in text, given
    status, _ = await page.post("/grants/revoke", {**form, "csrf": csrf}, Cookie=cookie)
    assert status == 303  # done (the broker's answer is the page's message)
    async with page.http.post(
        page.base + "/api/passkeys/approve/begin", json={"request": "ap_0"},
        headers={**page.host(), "Cookie": cookie},
    ) as answer:  # fmt: skip
        assert answer.status == 403


async def test_foreign_host_origin_and_site_are_refused(page: Page) -> None:
    cookie, csrf = await page.login()
    form = {"request": "ap_0000000000000000", "csrf": csrf}
    refused = [
        {"Host": f"rebind.test:{page.port}"},
        {"Host": f"localhost:{page.port + 1}"},
        {"Host": "localhost"},
        {"Origin": "http://evil.test"},
        {"Origin": "null"},
        {"Origin": f"http://127.0.0.1:{page.port}"},  # the other name: another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ]
    for headers in refused:
        status, text = await page.post("/approvals/deny", form, Cookie=cookie, **headers)
        assert status == 403 and "refused" in text, headers
        status, text, _ = await page.get("/approvals", Cookie=cookie, **headers)
        assert status == 403, headers
    status, _ = await page.post(
        "/approvals/deny", form, Cookie=cookie, Origin=f"http://localhost:{page.port}",
        **{"Sec-Fetch-Site": "same-origin"},
    )  # fmt: skip
    assert status == 303


async def test_a_page_the_broker_cannot_answer_says_why(page: Page, home: Paths) -> None:
    await asyncio.to_thread(enrol)
    approvals = home.state_dir / "approvals.bin"
    await asyncio.to_thread(approvals.write_bytes, b"BKA1" + bytes(40))
    cookie, _ = await page.login()
    status, text, _ = await page.get("/grants", Cookie=cookie)
    assert status == 503 and "cannot be read" in text  # the page, with its message
