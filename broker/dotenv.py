"""`secrets import`'s reading of a .env file: NAME=VALUE lines, checked as `secrets set`
checks one value, every bad line named by its number (never its content)."""

from __future__ import annotations

import re

from blindkey.config.errors import BlindkeyError
from blindkey.config.model import MAX_VALUE_BYTES, MIN_REDACTABLE, SECRET_NAME

_LINE = re.compile(r"^(?:export[ \t]+)?([^=\s]+)[ \t]*=[ \t]*(.*)\Z", re.DOTALL)


def _value(raw: str) -> str | None:
    """The value of a .env line's right side; None when a quote is not closed."""
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = raw.find(quote, 1)
        while quote == '"' and end > 0 and raw[end - 1] == "\\":
            end = raw.find(quote, end + 1)
        if end < 0 or raw[end + 1 :].strip()[:1] not in ("", "#"):
            return None
        inner = raw[1:end]
        if quote == '"':
            inner = inner.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        return inner
    return raw.split(" #", 1)[0].strip()


def parse_dotenv(text: str) -> dict[str, str]:
    """NAME=VALUE lines; every bad line named by its number (never its content)."""
    values: dict[str, str] = {}
    problems: list[str] = []
    # Only "\n" ends a line: splitlines() would also cut at characters a quoted value holds.
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.removesuffix("\r").strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(stripped)
        if match is None:
            problems.append(f"line {number}: not NAME=VALUE")
            continue
        name, value = match.group(1), _value(match.group(2))
        if not SECRET_NAME.fullmatch(name):
            problems.append(f"line {number}: {name[:40]!r} is not a secret name")
        elif value is None:
            problems.append(f"line {number}: {name}: a quote is not closed")
        elif len(value) < MIN_REDACTABLE:
            problems.append(
                f"line {number}: {name}: shorter than {MIN_REDACTABLE} characters (cannot be "
                "redacted safely; store it alone with `secrets set --allow-short`)"
            )
        elif len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
            problems.append(f"line {number}: {name}: longer than {MAX_VALUE_BYTES} bytes")
        elif name in values:
            problems.append(f"line {number}: {name} is given twice")
        else:
            values[name] = value
    if problems:
        raise BlindkeyError("nothing stored: " + "; ".join(problems))
    if not values:
        raise BlindkeyError("nothing stored: no NAME=VALUE lines")
    return values
