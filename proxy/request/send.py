"""Send: the request inject built goes to its upstream, and whatever goes wrong on the way
becomes an error of INTERFACE.md's table here, in one place, as httpcore maps the socket's
exceptions to its own at its boundary.

The upstream client raises UpstreamError (and an OSError may escape a socket call); the
stages before and after never see either: `upstream_errors` wraps the call and the relay
(which raises UpstreamError only while nothing is sent) and turns them into ProxyError,
with any text an upstream sent back redacted.
"""

from __future__ import annotations

from types import TracebackType

from blindkey.proxy.errors import ProxyError
from blindkey.proxy.request.inject import CountingBody
from blindkey.proxy.request.parse import Target
from blindkey.proxy.upstream import (
    BlockedAddressError,
    UnsendableRequest,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResolveError,
    UpstreamTimeout,
)
from blindkey.redact.redactor import Redactor


class upstream_errors:  # lower case: a `with` statement, as contextlib's would be
    """Raise an upstream failure inside as the ProxyError of the table; a body the token
    scan cut short (the upstream client only saw it fail) as the scan's refusal.

    A class rather than a generator under contextlib.contextmanager: every call enters it
    twice (the send, the relay), and a generator's context manager costs about 3 us a use
    more (bench: 7.1 against 1.2 us on the loaded bench machine)."""

    __slots__ = ("body", "redactor", "target")

    def __init__(
        self, target: Target, redactor: Redactor, body: CountingBody | None = None
    ) -> None:
        self.target, self.redactor, self.body = target, redactor, body

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, UpstreamError | OSError):
            return
        body = self.body
        if body is not None and body.refusal is not None:
            raise body.refusal from None
        raise upstream_error(exc, self.target, self.redactor) from None


def upstream_error(cause: BaseException, target: Target, redactor: Redactor) -> ProxyError:
    """The error of the table for `cause`, met calling `target`."""
    where = target.host_header
    code, message = "upstream_error", f"{where} failed: {type(cause).__name__}"
    if isinstance(cause, BlockedAddressError):
        code, message = (
            "blocked_address",
            (
                f"{target.host} resolves only to addresses blindkey does not dial (private, "
                "loopback, link-local or reserved); a human can permit a range with "
                "[allowlist] private_ranges"
            ),
        )
    elif isinstance(cause, UpstreamTimeout):
        code, message = "upstream_timeout", f"{where} did not answer in time"
    elif isinstance(cause, UnsendableRequest):
        code, message = "bad_request", str(cause)
    elif isinstance(cause, UpstreamResolveError):
        message = str(cause)
    elif isinstance(cause, UpstreamConnectError):
        message = f"{where}: {cause}"
    elif isinstance(cause, UpstreamError):
        message = f"{where} failed: {cause}"
    # An upstream's own words (a TLS alert, a reason) may echo a value: never unredacted.
    clean, _ = redactor.redact_text(message)
    return ProxyError(code, clean)
