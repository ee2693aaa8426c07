"""Every form a secret value can take in an answer: the literal spellings the redactor's
matcher looks for (the families no list covers are the views' business)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from urllib.parse import quote, quote_plus

# Derived forms this short would match ordinary text; the raw value is always kept.
_MIN_DERIVED = 6


def _b64_cores(value: bytes, alphabet: bytes | None) -> set[bytes]:
    """The base64 text of `value` at each of the three byte alignments.

    At alignment k the value follows k unknown bytes, so only the characters whose
    six bits come wholly from the value are fixed: those are the pattern.
    """
    forms: set[bytes] = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + value, altchars=alphabet)
        start = -(-8 * k // 6)
        end = (8 * (k + len(value))) // 6
        forms.add(encoded[start:end])
    whole = base64.b64encode(value, altchars=alphabet)
    forms.add(whole)
    forms.add(whole.rstrip(b"="))
    return forms


def _b32_cores(value: bytes) -> set[bytes]:
    """The base32 text of `value` at each of the five byte alignments: only the characters
    wholly the value's (a padded whole form adds at most 4 bits of the last byte). Matched
    without regard to case: one caseless pattern per alignment costs Hyperscan a fraction of
    an upper and a lower one each (1,000 values: 0.9 s against 4 s to compile)."""
    forms: set[bytes] = set()
    for k in range(5):
        encoded = base64.b32encode(b"\0" * k + value)
        start = -(-8 * k // 5)
        end = (8 * (k + len(value))) // 5
        forms.add(encoded[start:end])
    return {form for form in forms if len(form) >= _MIN_DERIVED}


# How HTML writers spell the characters they escape: Go's html/template (`+` too, and in
# attributes `=`, space and backquote), Python's html.escape, PHP's htmlspecialchars, and
# encoders that write every one as a numeric entity, decimal or hex.
_HTML_STYLES = [
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;", "+": "&#43;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;", "+": "&#43;",
     "=": "&#61;", " ": "&#32;", "`": "&#96;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"},
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#039;"},
    {c: f"&#{ord(c)};" for c in "&<>\"'+=/`"},
    {c: f"&#x{ord(c):X};" for c in "&<>\"'+=/`"},
    {c: f"&#x{ord(c):x};" for c in "&<>\"'+=/`"},
]  # fmt: skip


def _html_forms(form: bytes) -> set[bytes]:
    if not any(byte in form for byte in b"&<>\"'+=/` "):
        return set()
    out = set()
    for style in _HTML_STYLES:
        table = {ord(c): e for c, e in style.items()}
        out.add(form.decode("latin-1").translate(table).encode("latin-1"))
    return out - {form}


def _url_forms(text: str) -> set[str]:
    forms = {quote(text, safe=""), quote(text, safe="/"), quote_plus(text, safe="")}
    return forms | {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}


def _json_forms(text: str) -> set[str]:
    forms = {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    forms |= {f.replace("/", "\\/") for f in forms}
    return forms | {
        re.sub(r"\\u[0-9a-f]{4}", lambda m: m.group(0).upper().replace("\\U", "\\u"), f)
        for f in forms
    }


def encodings(value: str) -> set[bytes]:
    """Every form of `value` a response could carry it in."""
    raw = value.encode("utf-8", "surrogatepass")
    forms: set[bytes] = {raw, raw.hex().encode(), raw.hex().upper().encode()}
    with contextlib.suppress(UnicodeEncodeError):  # an answer may echo it in Latin-1
        forms.add(value.encode("latin-1"))
    forms |= _b64_cores(raw, None) | _b64_cores(raw, b"-_")
    forms |= {f.encode() for f in _url_forms(value) | _json_forms(value)}
    # Quoted-printable (a value short of a line), and the HTML spellings of every form.
    printable = binascii.b2a_qp(raw, quotetabs=True)
    forms |= {printable, re.sub(rb"=[0-9A-F]{2}", lambda m: m.group().lower(), printable)}
    forms |= {spelled for form in list(forms) for spelled in _html_forms(form)}
    # UTF-16 and UTF-32 bodies, either byte order (a BOM comes only at the body's start).
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        forms.add(value.encode(codec, "surrogatepass"))
    return {f for f in forms if f == raw or len(f) >= _MIN_DERIVED}


def caseless_encodings(value: str) -> set[bytes]:
    """Forms of `value` matched without regard to case (base32, upper or lower)."""
    return _b32_cores(value.encode("utf-8", "surrogatepass"))


def secret_parts(value: str) -> list[str]:
    """The value, and the password of a `user:pass` pair, which is a secret on its own."""
    parts = [value]
    if ":" in value:
        password = value.split(":", 1)[1]
        if len(password) >= 8:
            parts.append(password)
    return parts
