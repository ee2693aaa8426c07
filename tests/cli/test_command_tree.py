"""The command tree as a whole: every leaf command has help text and a handler that
resolves and imports; building the tree loads no handler's dependencies; the broker's
flags are one list for its two entry points; `mcp serve` without the optional SDK says
how to add it."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindkey.cli.main import _handler, build_parser
from blindkey.config.paths import Paths
from tests.conftest import ROOT, RunCli
from tests.staging import Installed, clean_env

Leaf = tuple[str, argparse.ArgumentParser, str | None]


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[argparse._SubParsersAction[argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield action


def leaves(parser: argparse.ArgumentParser, path: str = "blindkey") -> Iterator[Leaf]:
    """Every command that runs something, with the help its parent lists it with."""
    for group in _subcommands(parser):
        helps = {choice.dest: choice.help for choice in group._choices_actions}
        for name, child in group.choices.items():
            if any(True for _ in _subcommands(child)):
                assert helps.get(name), f"{path} {name}: a command group with no help"
                yield from leaves(child, f"{path} {name}")
            else:
                yield f"{path} {name}", child, helps.get(name)


def test_every_leaf_has_help_and_a_handler_that_imports() -> None:
    found = list(leaves(build_parser()))
    assert len(found) > 50  # the whole tree, not a part of it
    named_by_string = []
    for path, parser, text in found:
        assert text, f"{path}: no help text"
        chosen = parser.get_default("handler")
        assert chosen is not None, f"{path}: no handler"
        if isinstance(chosen, str):
            named_by_string.append(chosen)
        # A string is imported here, as `main` does when the command is chosen: a typo in
        # a module or function name fails this test, not a user's command.
        handler = _handler(chosen)
        assert callable(handler), path
        assert handler.__name__.startswith("cmd_"), (path, handler)
    # The handlers living outside cli/ (the release channels', the service's) are named by
    # strings; every one of them was resolved above.
    assert named_by_string, "the walk saw no handler named by a string"
    assert all(":" in name for name in named_by_string)


def test_building_the_tree_loads_no_handler_dependencies() -> None:
    """`blindkey --help` and every command pay only for the tree and what they run: the HTTP
    stack, the MCP SDK, the approvals, the audit and the QR code wait for their commands."""
    script = (
        "import sys\n"
        "from blindkey.cli.main import build_parser\n"
        "build_parser()\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    loaded = set(result.stdout.split())
    assert "blindkey.cli.secrets" in loaded  # the tree itself was built
    heavy = ("aiohttp", "mcp", "segno", "tomlkit", "blindkey.proxy", "blindkey.audit",
             "blindkey.redact", "blindkey.broker.approvals", "blindkey.broker.backends",
             "blindkey.broker.server")  # fmt: skip
    pulled = sorted(
        m for m in loaded if any(m == h or m.startswith((f"{h}.", f"{h}_")) for h in heavy)
    )
    assert not pulled, pulled


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text))


def test_broker_serve_has_the_same_flags_from_both_entry_points(run_cli: RunCli) -> None:
    """The proxy spawns `python -m blindkey.broker serve`, a human or a unit runs `blindkey
    broker serve`: both take their flags from broker/serve.add_arguments."""
    cli = run_cli("broker", "serve", "--help")
    assert cli.returncode == 0, cli.stderr
    module = subprocess.run(
        [sys.executable, "-m", "blindkey.broker", "serve", "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip
    assert module.returncode == 0, module.stderr
    assert _flags(cli.stdout) == _flags(module.stdout)
    assert {"--socket", "--allow-uid", "--help"} <= _flags(cli.stdout)


def test_mcp_serve_without_the_sdk_says_how_to_add_it(home: Paths) -> None:
    """The SDK is the extra blindkey[mcp]. Its absence is made here by a None in
    sys.modules (Python then refuses to import it, as when it is not installed), since
    uninstalling it from the test environment would break the tests that use it."""
    script = (
        "import sys\n"
        "sys.modules['mcp'] = None\n"
        "from blindkey.cli.main import main\n"
        "raise SystemExit(main(['mcp', 'serve']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input="", capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
        env={**os.environ, "BLINDKEY_HOME": str(home.config_dir)},
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "pip install 'blindkey[mcp]'" in result.stderr
    assert "pipx inject blindkey mcp" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(600)  # the first user builds and installs the wheel
def test_the_wheel_installs_without_the_mcp_sdk_and_says_how_to_add_it(
    installed: Installed, tmp_path: Path
) -> None:
    """The same refusal where the SDK is really absent: the wheel installed without extras."""
    missing = subprocess.run(
        [installed.python, "-c", "import mcp"],
        capture_output=True, text=True, cwd="/", env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "No module named 'mcp'" in missing.stderr
    result = subprocess.run(
        [installed.blindkey, "mcp", "serve"],
        input="", capture_output=True, text=True, cwd="/", timeout=60, check=False,
        env=clean_env(BLINDKEY_HOME=str(tmp_path / "home")),
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "pip install 'blindkey[mcp]'" in result.stderr
    assert "Traceback" not in result.stderr
