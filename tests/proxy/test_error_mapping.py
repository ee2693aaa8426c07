"""Every exception the request's stages raise becomes an error of INTERFACE.md's table, in
one function (proxy/request/edge.py `to_proxy_error`), and nothing unknown is turned into one."""

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
from blindkey.proxy.request.pipeline import UpstreamFailure
from blindkey.proxy.upstream import BlockedAddressError, UpstreamError
from blindkey.redact.redactor import Redactor

VALUE = "ghp_valueTheUpstreamEchoes0123456789"


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


def instance(cls: type[BlindkeyError]) -> Exception:
    target = parse_target("https://api.example.com/x")
    if cls is ProxyError or issubclass(cls, protocol.BrokerDenied):
        return cls("secret_denied", "refused")
    if cls is BlockedAddressError:
        return UpstreamFailure(BlockedAddressError("h.example", ["10.0.0.1"]), target, Redactor({}))
    if cls is UpstreamFailure:
        return UpstreamFailure(OSError("reset"), target, Redactor({}))
    if issubclass(cls, UpstreamError):
        return UpstreamFailure(cls(f"said {VALUE}"), target, Redactor({"K": VALUE}))
    return cls("failed")


def test_the_stages_raise_the_classes_this_test_knows() -> None:
    names = {cls.__name__ for cls in raised_by_the_stages()}
    # A new class shows up here first, so it cannot be added without being mapped.
    assert {"ProxyError", "BrokerDenied", "BrokerUnavailable", "ProtocolError", "UpstreamError",
            "UpstreamTimeout", "BlockedAddressError", "UnsendableRequest", "UpstreamFailure",
            "DecodingError", "StaleConnection"} <= names  # fmt: skip


@pytest.mark.parametrize("cls", raised_by_the_stages(), ids=lambda cls: cls.__name__)
def test_every_class_maps_to_a_code_of_the_table(cls: type[BlindkeyError]) -> None:
    error = to_proxy_error(instance(cls))
    assert error.code in STATUS
    assert VALUE not in error.message


def test_an_exception_of_no_known_class_is_an_internal_error_whose_text_is_not_shown() -> None:
    error = to_proxy_error(KeyError(f"a bug holding {VALUE}"))
    assert (error.code, error.status) == ("internal_error", 500)
    assert VALUE not in error.message and error.close


@pytest.mark.parametrize(
    ("cause", "code"),
    [
        (BlockedAddressError("h.example", []), "blocked_address"),
        (OSError("connection reset"), "upstream_error"),
    ],
)
def test_upstream_causes_keep_their_own_codes(cause: Exception, code: str) -> None:
    failure = UpstreamFailure(cause, parse_target("https://h.example/"), Redactor({}))
    assert to_proxy_error(failure).code == code
