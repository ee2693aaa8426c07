from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.inject import inject_body, inject_headers, inject_query
from blindkey.proxy.request.parse import Injection

VALUES = {"T": "v@lue/with&specials=1", "U": "user:pass-word-1"}


def test_query_replaces_existing_and_keeps_others_exactly() -> None:
    real, shown = inject_query("/p?a=%2F&key=old&b", [Injection("query", "key", "T")], VALUES)
    assert real == "/p?a=%2F&b&key=v%40lue%2Fwith%26specials%3D1"
    assert shown == "/p?a=%2F&b&key={T}"


def test_query_added_when_absent() -> None:
    real, shown = inject_query("/p", [Injection("query", "api_key", "T")], VALUES)
    assert real.startswith("/p?api_key=v%40lue")
    assert shown == "/p?api_key={T}"


def test_headers_replace_agent_supplied_authorization() -> None:
    headers: CIMultiDict[str] = CIMultiDict({"authorization": "agent-made", "X-Other": "1"})
    inject_headers(headers, [Injection("basic", "", "U")], VALUES)
    assert headers.getall("Authorization") == ["Basic dXNlcjpwYXNzLXdvcmQtMQ=="]


def test_header_value_with_line_break_is_refused() -> None:
    headers: CIMultiDict[str] = CIMultiDict()
    with pytest.raises(ProxyError):
        inject_headers(headers, [Injection("header", "X-Key", "N")], {"N": "a\r\nInjected: 1"})


def test_body_creates_objects_and_refuses_non_objects() -> None:
    body, ctype = inject_body(b"", "", [Injection("body", "a.b.c", "T")], VALUES)
    assert orjson.loads(body) == {"a": {"b": {"c": VALUES["T"]}}} and ctype == "application/json"
    for bad in (b"[1]", b"not json", b'{"a": 5}'):
        with pytest.raises(ProxyError):
            inject_body(bad, "application/json", [Injection("body", "a.b", "T")], VALUES)


def test_form_field_replaced() -> None:
    body, ctype = inject_body(b"x=1&secret=old", "", [Injection("form", "secret", "T")], VALUES)
    assert body == b"x=1&secret=v%40lue%2Fwith%26specials%3D1"
    assert ctype == "application/x-www-form-urlencoded"
