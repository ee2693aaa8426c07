"""Spellings of a value an upstream may answer with that were not covered (issue 23, item
8): HTML entities, UTF-16 and UTF-32 bodies, base32, quoted-printable, and base64 lines in
a JSON string whose `/` are escaped. Each is sent by a real upstream through the proxy."""

from __future__ import annotations

import base64
import binascii
import html
import json
from collections.abc import Callable

import pytest

from blindkey.broker.vault import FileVault
from blindkey.config.paths import Paths
from tests.proxy.test_hostile_answers import body_of, proxied

# AWS-style: base64 characters, so `+` and `/`; and `&`, `"`, `=` for the entity writers.
# `???` and `?~` put `/` in its base64 at every alignment, for PHP's `\/`.
VALUE = '???wJalrXUtnFEMI/K7MD?~ENG+bPx??~RfiCY&"EX??~AMPLE=KEY'
MARK = b"[REDACTED:AWS_SECRET]"


def go_html(value: bytes) -> bytes:
    # Go's html/template text escaper.
    table = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;", "+": "&#43;"}
    return value.decode().translate({ord(k): v for k, v in table.items()}).encode()


def hex_entities(value: bytes) -> bytes:
    return b"".join(b"&#x%X;" % c if chr(c) in "&\"'+/=<>" else bytes([c]) for c in value)


def php_json_base64_lines(value: bytes) -> bytes:
    text = base64.b64encode(value).decode()
    lines = "\n".join(text[i : i + 16] for i in range(0, len(text), 16))
    return json.dumps({"key": lines}).replace("/", "\\/").encode()


SPELLINGS: dict[str, Callable[[bytes], bytes]] = {
    "html-go": go_html,
    "html-python": lambda v: html.escape(v.decode()).encode(),
    "html-hex": hex_entities,
    "utf-16-bom": lambda v: v.decode().encode("utf-16"),
    "utf-16-be": lambda v: v.decode().encode("utf-16-be"),
    "utf-32-bom": lambda v: v.decode().encode("utf-32"),
    "utf-32-be": lambda v: v.decode().encode("utf-32-be"),
    "base32": base64.b32encode,
    "base32-offset": lambda v: base64.b32encode(b"xyz" + v),
    "quoted-printable": lambda v: binascii.b2a_qp(v, quotetabs=True),
    "json-php-base64-lines": php_json_base64_lines,
}


@pytest.mark.parametrize("spell", SPELLINGS.values(), ids=SPELLINGS.keys())
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_an_uncommon_spelling_is_redacted(
    home: Paths, spell: Callable[[bytes], bytes], streamed: bool
) -> None:
    FileVault(home).set("development", "AWS_SECRET", VALUE)
    body = b"<p>" + spell(VALUE.encode()) + b"</p>"
    if streamed:
        framing = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        framing = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    wire, _ = await proxied(home, b"HTTP/1.1 200 OK\r\n" + framing, inject="AWS_SECRET")
    got = body_of(wire)
    assert MARK in got
    spelled = spell(VALUE.encode())
    # Nothing of the value is left in its spelling but alignment leftovers at the edges.
    assert spelled[8:-8] not in got
    assert VALUE.encode()[4:-4] not in got
