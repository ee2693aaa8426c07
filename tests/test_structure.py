"""The shape DESIGN.md ("Layout") promises, checked on every run: one folder per concern,
imports that run one way, modules and functions small enough to read, and one synchronous
client for the broker. Each check names what it found, so a failure says where to look."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Higher imports lower, never the reverse: cli and service on top; proxy and ui (the page
# of `blindkey ui`) above broker; broker and proxy above audit and redact; config under
# everything.
RANK = {
    "cli": 3, "service": 3, "proxy": 2, "ui": 2, "broker": 1, "audit": 0, "redact": 0,
    "config": -1,
}  # fmt: skip
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# The synchronous client every CLI command uses, the proxy's own async client, and the
# sockets that are not the broker's (systemd's notify socket; the broker's listening side).
UNIX_SOCKET_USERS = {
    "broker/link.py",
    "broker/client.py",
    "broker/sockets.py",
    "proxy/systemd.py",
    "audit/ship/journald.py",  # the journal's native protocol (a datagram socket)
    "service/units.py",
}


def modules() -> Iterator[tuple[str, ast.Module, int]]:
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            yield path.relative_to(ROOT).as_posix(), ast.parse(text), text.count("\n")


def test_the_packages_are_the_layout() -> None:
    """A new top-level package is a new concern: it joins RANK (and DESIGN.md) on purpose."""
    found = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert found - {"tests", "bench"} == set(RANK)


def upward_imports(name: str, tree: ast.Module) -> list[str]:
    here = name.split("/")[0]
    upward = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            targets = [node.module or ""]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            parts = [*target.split("."), ""]
            there = parts[1]
            if parts[0] == "blindkey" and there not in ("", here) and RANK[there] >= RANK[here]:
                upward.append(f"{name}:{node.lineno} imports {target}")
    return upward


def test_imports_run_one_way() -> None:
    assert [line for name, tree, _ in modules() for line in upward_imports(name, tree)] == []


def test_modules_fit_on_a_few_screens() -> None:
    long = [f"{name}: {lines}" for name, _, lines in modules() if lines > MAX_MODULE_LINES]
    assert long == []


def test_functions_read_top_to_bottom() -> None:
    long = []
    for name, tree, _ in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}:{node.lineno} {node.name}: {length}")
    assert long == []


def test_one_synchronous_client_speaks_to_the_broker() -> None:
    """Every CLI command reaches the broker through broker/link.py: no module opens a Unix
    socket of its own (each copy used to map the broker's failures its own way)."""
    found = set()
    for name, tree, _ in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "AF_UNIX":
                found.add(name)
    assert found - UNIX_SOCKET_USERS == set()


@pytest.mark.parametrize(
    ("name", "source", "upward"),
    [
        ("audit/x.py", "from blindkey.proxy.server import ProxyServer\n", True),
        ("broker/x.py", "def f() -> None:\n    import blindkey.cli.main\n", True),
        ("redact/x.py", "from blindkey.audit import record\n", True),
        ("proxy/x.py", "from blindkey.broker.client import BrokerClient\n", False),
        ("cli/x.py", "from blindkey.service import units\n", True),
        ("audit/x.py", "from blindkey.config.paths import Paths\n", False),
    ],
)
def test_the_import_check_sees_an_upward_import(name: str, source: str, upward: bool) -> None:
    """The check above can fail: an import from a package as high or higher is seen, one
    hidden in a function too."""
    assert bool(upward_imports(name, ast.parse(source))) is upward


def late_callbacks(name: str, tree: ast.Module) -> list[str]:
    """`x.on_change = f` outside x's own constructor: a callback tied after construction,
    which neither a reader nor a tool can follow from the constructor call."""
    found = []
    for scope in ast.walk(tree):
        if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(scope):
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                if not (isinstance(target, ast.Attribute) and target.attr.startswith("on_")):
                    continue
                own = isinstance(target.value, ast.Name) and target.value.id == "self"
                if not (own and scope.name == "__init__"):
                    found.append(f"{name}:{node.lineno} {ast.unparse(target)}")
    return found


def test_callbacks_come_through_constructors() -> None:
    assert [line for name, tree, _ in modules() for line in late_callbacks(name, tree)] == []


def test_the_callback_check_sees_a_late_one() -> None:
    late = "def wire(server):\n    server.state.on_change = server.push\n"
    own = "class A:\n    def __init__(self, on_change):\n        self.on_change = on_change\n"
    assert late_callbacks("x.py", ast.parse(late)) and not late_callbacks("x.py", ast.parse(own))


def test_every_package_is_in_the_wheel() -> None:
    """A package folder missing from pyproject's list imports in the editable install (found
    through its parent) and not from the wheel users get (broker/credentials once did)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ].values())  # fmt: skip
    found = {
        init.parent.relative_to(ROOT).as_posix()
        for package in RANK
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert found - listed == set()
