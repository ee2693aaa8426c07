"""Every exception the request's stages raise becomes an error of INTERFACE.md's table: the
upstream client's at the send stage's boundary (proxy/request/send.py `upstream_errors`),
the rest in proxy/request/edge.py `to_proxy_error`; each class to its own code, and nothing
unknown is turned into one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import blindkey.proxy
from blindkey.broker import protocol
from blindkey.config.errors import BlindkeyError
from blindkey.proxy.errors import STATUS, ProxyError
from blindkey.proxy.request.edge import to_proxy_error
from blindkey.proxy.request.parse import parse_target
from blindkey.proxy.request.send import upstream_errors
from blindkey.proxy.upstream import BlockedAddressError, UpstreamError
from blindkey.redact.redactor import Redactor

VALUE = "ghp_valueTheUpstreamEchoes0123456789"
TARGET = parse_target("https://api.example.com/x")

# The code each class raised by the stages is answered with. A code other than the usual
# for the classes that carry their own (ProxyError, BrokerDenied), so a mapping that
# flattens them shows.
EXPECTED = {
    "BlockedAddressError": "blocked_address",
    "BrokerDenied": "approval_denied",
    "BrokerUnavailable": "broker_unavailable",
    "CaError": "internal_error",
    "DecodingError": "upstream_error",
    "ProtocolError": "broker_unavailable",
    "ProxyError": "host_not_allowed",
    "StaleConnection": "upstream_error",
    "UnsendableRequest": "bad_request",
    "UpstreamConnectError": "upstream_error",
    "UpstreamError": "upstream_error",
    "UpstreamProtocolError": "upstream_error",
    "UpstreamResolveError": "upstream_error",
    "UpstreamTimeout": "upstream_timeout",
}


def raised_by_the_stages() -> list[type[BlindkeyError]]:
    """Every BlindkeyError class defined in the proxy's modules and the broker protocol."""
    modules = [protocol]
    for info in pkgutil.walk_packages(blindkey.proxy.__path__, "blindkey.proxy."):
        if not info.name.endswith(("__main__", ".cli", ".lifecycle")):
            modules.append(importlib.import_module(info.name))
    found = {
        cls
        for module in modules
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BlindkeyError) and cls.__module__ == module.__name__
    }
    return sorted(found, key=lambda cls: cls.__qualname__)


def instance(cls: type[BlindkeyError]) -> BlindkeyError:
    if cls is ProxyError:
        return ProxyError("host_not_allowed", "refused")
    if issubclass(cls, protocol.BrokerDenied):
        return cls("approval_denied", "refused")
    if cls is BlockedAddressError:
        return BlockedAddressError("h.example", ["10.0.0.1"])
    if issubclass(cls, UpstreamError):
        return cls(f"said {VALUE}")
    return cls("failed")


def answered(exc: BaseException, redactor: Redactor | None = None) -> ProxyError:
    """What the agent is answered for `exc` raised where the pipeline calls upstream."""
    try:
        with upstream_errors(TARGET, redactor or Redactor({"K": VALUE})):
            raise exc
    except Exception as out:
        return to_proxy_error(out)
    raise AssertionError("upstream_errors swallowed an exception")


def test_every_class_the_stages_raise_has_its_code_here() -> None:
    names = {cls.__name__ for cls in raised_by_the_stages()}
    # A new class shows up here first, so it cannot be added without its code.
    assert names == set(EXPECTED)


@pytest.mark.parametrize("cls", raised_by_the_stages(), ids=lambda cls: cls.__name__)
def test_every_class_maps_to_its_own_code_of_the_table(cls: type[BlindkeyError]) -> None:
    error = answered(instance(cls))
    assert error.code in STATUS
    assert error.code == EXPECTED[cls.__name__]
    assert VALUE not in error.message


def test_a_broker_refusal_with_a_code_outside_the_table_is_a_bad_request() -> None:
    assert answered(protocol.BrokerDenied("no_such_code", "refused")).code == "bad_request"


def test_a_socket_error_met_upstream_is_an_upstream_error() -> None:
    assert answered(OSError("connection reset")).code == "upstream_error"


def test_an_exception_of_no_known_class_is_an_internal_error_whose_text_is_not_shown() -> None:
    error = to_proxy_error(KeyError(f"a bug holding {VALUE}"))
    assert (error.code, error.status) == ("internal_error", 500)
    assert VALUE not in error.message and error.close
