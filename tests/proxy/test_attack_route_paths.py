"""A route's base path escaped by encodings the proxy did not read as a dot segment but a
server on the way may (`..%2f`, `..%5c`, `..;/`, `%252e%252e`, compatibility dots): every
spelling is refused before anything is sent, and whatever tail is accepted stays under the
base path however aggressively a server decodes it (hypothesis)."""

from __future__ import annotations

import posixpath
import unicodedata
from urllib.parse import unquote

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.routes import route_target
from tests.proxy.conftest import Env
from tests.proxy.test_routes import hits, routed, send

__all__ = ["routed"]  # the fixture, imported for the tests below

ESCAPES = [
    "..%2f..%2fadmin",
    "..%2F..%2Fadmin",
    "a/..%2f..%2f..%2fadmin",
    "..%5c..%5cadmin",
    "..\\..\\admin",
    "..;/..;/admin",
    "..;x=1/admin",
    ".;/admin",
    "%2e%2e;/admin",
    "%252e%252e/%252e%252e/admin",
    "%25252e%25252e/admin",
    "%252f..%252fadmin",
    "%ef%bc%8e%ef%bc%8e/admin",  # fullwidth dots, NFKC ".."
    "%e2%80%a5/admin",  # TWO DOT LEADER, NFKC ".."
    "%c0%ae%c0%ae/admin",  # overlong UTF-8 dots
    "...%2fadmin",
    "..%20/admin",  # Windows drops trailing spaces and dots
    "..%00/admin",
]


@pytest.mark.parametrize("tail", ESCAPES)
async def test_an_encoded_climb_out_of_the_base_path_is_refused(routed: Env, tail: str) -> None:
    env = routed
    auth = {"Authorization": f"Bearer {env.token}"}
    status, _, body = await send(env, "GET", f"/r/echo/{tail}", auth)
    assert (status, orjson.loads(body)["error"]["code"]) == (400, "bad_request"), body
    assert hits(env) == []


@pytest.mark.parametrize(
    ("tail", "upstream"),
    [
        ("projects/group%2Fproject/issues", "/v1/projects/group%2Fproject/issues"),  # GitLab
        ("files/report%20v1.txt", "/v1/files/report%20v1.txt"),
        ("items;version=2", "/v1/items;version=2"),
        ("a..b/.hidden/100%25", "/v1/a..b/.hidden/100%25"),
    ],
)
async def test_ordinary_encoded_paths_still_pass_as_sent(
    routed: Env, tail: str, upstream: str
) -> None:
    env = routed
    status, _, body = await send(
        env, "GET", f"/r/echo/{tail}", {"Authorization": f"Bearer {env.token}"}
    )
    assert status == 200, body
    ((_, path, _),) = hits(env)
    assert path == upstream


def widest_reading(path: str) -> list[str]:
    """The path as the most permissive server on the way could resolve it: decoded until it
    stops changing, backslashes as slashes, `;` parameters dropped, compatibility forms
    folded, trailing dots and spaces dropped, then dot segments resolved."""
    for _ in range(4):
        path = unquote(path, errors="replace")
    path = path.replace("\\", "/")
    segments = []
    for segment in path.split("/"):
        bare = unicodedata.normalize("NFKC", segment.partition(";")[0])
        if "." in bare and not bare.strip(". "):
            bare = "." if bare.count(".") == 1 else ".."
        segments.append(bare)
    return posixpath.normpath("/" + "/".join(segments).lstrip("/")).split("/")


PIECES = st.sampled_from(
    [
        "..", ".", "/", "\\", ";", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "2e", "%252e",
        "%c0%ae", "%ef%bc%8e", "%e2%80%a5", "a", "b", "%20", " ", "%00", "x=1", "%3b",
    ]
)  # fmt: skip
BASE = "https://api.example.com/v1/inner"


@given(tail=st.lists(PIECES, max_size=12).map("".join) | st.text(max_size=30))
@example(tail="..%2f..%2fadmin")
@example(tail="..;/admin")
def test_an_accepted_tail_stays_under_the_base_path(tail: str) -> None:
    try:
        target = route_target("api", BASE, tail, "")
    except ProxyError as exc:
        assert exc.code == "bad_request"
        return
    assert target.path_query.startswith("/v1/inner/")
    resolved = widest_reading(target.path_query)
    assert resolved[:3] == ["", "v1", "inner"], (tail, resolved)
