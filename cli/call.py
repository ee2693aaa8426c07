"""`blindkey call`: one request through the running proxy, for shells and scripts.

The flags become the X-AS-* headers of /proxy, so the call passes every check and leaves
the same audit record as any agent's; the answer's body, which the proxy has redacted, is
printed as it arrives (`-i`: the status line and headers first). Exit 0 on a 2xx answer, 1
otherwise; the agent token comes from BLINDKEY_AGENT_TOKEN (without one, the call is
anonymous, which `require_agent_token = false` allows).
"""

from __future__ import annotations

import argparse
import http.client
import sys
from pathlib import Path

import orjson

from blindkey.broker.release_exec import agent_token
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.loader import load_settings
from blindkey.config.paths import Paths
from blindkey.proxy.errors import REQUEST_ID_HEADER
from blindkey.proxy.request.parse import HTTP_TOKEN

CHUNK = 65536
TIMEOUT = 330.0  # longer than the longest wait for an approval the proxy holds a call for
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104 - names


def proxy_address(paths: Paths) -> tuple[str, int]:
    """Where the running proxy listens: its status file, else config.toml, else defaults."""
    try:
        status = orjson.loads(paths.status_file.read_bytes())
        host, port = str(status["host"]), int(status["port"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        try:
            proxy = load_settings(paths.config_file).proxy
        except (BlindkeyError, OSError):
            host, port = "127.0.0.1", 8765
        else:
            host, port = proxy.host, proxy.port
    return _WILDCARDS.get(host, host), port


def _pairs(values: list[str], flag: str, metavar: str) -> list[tuple[str, str]]:
    pairs = []
    for text in values:
        key, sep, secret = text.partition("=")
        if not sep or not key or not secret:
            raise UsageError(f"{flag} takes {metavar}, got {text!r}")
        pairs.append((key, secret))
    return pairs


def request_headers(args: argparse.Namespace) -> dict[str, str]:
    """The X-AS-* headers the flags ask for, and the -H headers."""
    headers: dict[str, str] = {"X-AS-Target-URL": args.url}
    if len(args.bearer) + len(args.basic) > 1:
        raise UsageError("one --bearer or --basic at most: both write Authorization")
    for secret in args.bearer:
        headers["X-AS-Inject-Bearer"] = secret
    for secret in args.basic:
        headers["X-AS-Inject-Basic"] = secret
    for style, flag, metavar, values in (
        ("Header", "--header", "H=S", args.header),
        ("Query", "--query", "P=S", args.query),
        ("Body", "--body-field", "a.b=S", args.body_field),
    ):
        for key, secret in _pairs(values, flag, metavar):
            headers[f"X-AS-Inject-{style}-{key}"] = secret
    if len(headers) == 1:
        raise UsageError(
            "call needs a secret to inject: --bearer S, --basic S, --header H=S, --query P=S "
            "or --body-field a.b=S"
        )
    for line in args.headers:
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not HTTP_TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            raise UsageError(f"-H takes 'Name: value', got {line!r}")
        if name.lower().startswith("x-as-"):
            raise UsageError(f"-H {name}: blindkey sets X-AS-* headers from its own flags")
        headers[name] = value.strip()
    token = agent_token()
    if token is not None:
        headers["X-AS-Agent-Token"] = token
    return headers


def wire_headers(headers: dict[str, str]) -> dict[str, str]:
    """Header values as UTF-8 bytes (http.client writes each character as one Latin-1
    byte; the proxy reads X-AS-* values as UTF-8)."""
    return {name: value.encode("utf-8").decode("latin-1") for name, value in headers.items()}


def request_body(data: str | None) -> bytes | None:
    if data is None:
        return None
    if not data.startswith("@"):
        return data.encode("utf-8")
    source = data[1:]
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise BlindkeyError(f"-d @{source}: {exc.strerror}") from exc


def cmd_call(paths: Paths, args: argparse.Namespace) -> int:
    headers = request_headers(args)
    body = request_body(args.data)
    method = (args.method or ("POST" if body is not None else "GET")).upper()
    if not HTTP_TOKEN.match(method):
        raise UsageError(f"--method {args.method!r} is not an HTTP method")
    host, port = proxy_address(paths)
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        try:
            connection.request(method, "/proxy", body=body, headers=wire_headers(headers))
            response = connection.getresponse()
        except ConnectionRefusedError:
            raise BlindkeyError(
                f"no proxy answers on {host}:{port}; start it with `blindkey proxy start`"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise BlindkeyError(f"the call to the proxy on {host}:{port} failed: {exc}") from exc
        return _print(response, include=args.include)
    finally:
        connection.close()


def _print(response: http.client.HTTPResponse, *, include: bool) -> int:
    out = sys.stdout.buffer
    if include:
        out.write(f"HTTP/1.1 {response.status} {response.reason}\r\n".encode("latin-1"))
        for name, value in response.getheaders():
            out.write(f"{name}: {value}\r\n".encode("latin-1"))
        out.write(b"\r\n")
    own_error = REQUEST_ID_HEADER in response.headers and response.headers.get(
        "Content-Type", ""
    ).startswith("application/json")
    held = b""
    while chunk := response.read1(CHUNK):
        out.write(chunk)
        out.flush()
        if own_error and len(held) < CHUNK:
            held += chunk
    ok = 200 <= response.status < 300
    if not ok and own_error:
        _explain(response.status, held, response.headers[REQUEST_ID_HEADER])
    return 0 if ok else 1


def _explain(status: int, body: bytes, request_id: str) -> None:
    """blindkey's own refusal, in one line on stderr (the body went to stdout as sent).
    An upstream's JSON error passes through too: the proxy's names its request id."""
    try:
        error = orjson.loads(body)
        code, message = str(error["error"]), str(error["message"])
        if error["request_id"] != request_id:
            return
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return
    sys.stdout.flush()
    hint = ""
    if code == "unauthenticated" and agent_token() is None:
        hint = " (set BLINDKEY_AGENT_TOKEN to the agent's token)"
    sys.stderr.write(f"blindkey: {status} {code}: {message}{hint}\n")
