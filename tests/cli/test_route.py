"""`blindkey route add|list|remove`: what lands in config.toml and the allowlist, what is
refused (and then changes nothing), and that a change is in force when the command returns."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from blindkey.config.edit import edit_config, toml_table
from blindkey.config.loader import load_settings
from blindkey.config.model import Route
from blindkey.config.paths import Paths
from tests.conftest import RunCli
from tests.e2e.test_sdk_routes import blindkey
from tests.proxy.conftest import open_env


def test_add_list_remove(home: Paths, run_cli: RunCli) -> None:
    done = run_cli("route", "add", "openai", "--to", "https://api.openai.com/", "--bearer", "OAI")
    assert done.returncode == 0, done.stderr
    assert "route openai: http://127.0.0.1:8765/r/openai/... -> https://api.openai.com/..." in (
        done.stdout
    )
    assert "allowlisted: api.openai.com" in done.stdout
    done = run_cli(
        "route", "add", "claude", "--to", "https://api.anthropic.com:8443/v1",
        "--header", "x-api-key=ANT",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "allowlisted: api.anthropic.com:8443" in done.stdout
    done = run_cli("route", "add", "local", "--to", "http://[::1]:9000", "--query", "key=K")
    assert "allowlisted: http://[::1]:9000" in done.stdout
    done = run_cli("route", "add", "again", "--to", "https://api.openai.com/v2", "--basic", "B")
    assert "already allowlisted by api.openai.com" in done.stdout

    settings = load_settings(home.config_file)
    assert settings.routes == {
        "openai": Route("https://api.openai.com", "bearer", "OAI"),
        "claude": Route("https://api.anthropic.com:8443/v1", "header", "ANT", "x-api-key"),
        "local": Route("http://[::1]:9000", "query", "K", "key"),
        "again": Route("https://api.openai.com/v2", "basic", "B"),
    }
    assert [e.text for e in settings.allowlist.entries] == [
        "api.openai.com",
        "api.anthropic.com:8443",
        "http://[::1]:9000",
    ]
    listed = orjson.loads(run_cli("route", "list", "--json").stdout)
    assert [r["route"] for r in listed] == ["again", "claude", "local", "openai"]
    assert listed[1] == {
        "route": "claude",
        "to": "https://api.anthropic.com:8443/v1",
        "inject": "header",
        "secret": "ANT",
        "name": "x-api-key",
        "base_url": "http://127.0.0.1:8765/r/claude",
        "sdk_base_url": "http://127.0.0.1:8765/r/claude",  # `to` has its own path
    }
    text = run_cli("route", "list").stdout
    assert "header x-api-key: ANT" in text and "query key=K" in text

    done = run_cli("route", "remove", "openai")
    assert done.returncode == 0, done.stderr
    settings = load_settings(home.config_file)
    assert "openai" not in settings.routes
    assert "api.openai.com" in [e.text for e in settings.allowlist.entries]


@pytest.mark.parametrize(
    ("args", "status", "fragment"),
    [
        (["x", "--to", "https://a.example"], 2, "exactly one of --bearer"),
        (["x", "--to", "https://a.example", "--bearer", "A", "--basic", "B"], 2, "exactly one"),
        (["x", "--to", "ftp://a.example", "--bearer", "A"], 2, "http:// or https://"),
        (["x", "--to", "https://u@a.example", "--bearer", "A"], 2, "userinfo"),
        (["x", "--to", "https://a.example/?q=1", "--bearer", "A"], 2, "must not carry a query"),
        (["x", "--to", "https://a.example", "--bearer", "1bad"], 2, "not a secret name"),
        (["x", "--to", "https://a.example", "--header", "x-api-key"], 2, "--header takes H=S"),
        (["x", "--to", "https://a.example", "--header", "Host=A"], 2, "not a header"),
        (["x", "--to", "https://a.example", "--query", "=A"], 2, "--query takes P=S"),
        (["bad/name", "--to", "https://a.example", "--bearer", "A"], 2, "not a route name"),
        (["taken", "--to", "https://b.example", "--bearer", "A"], 1, "route taken exists"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    home: Paths, run_cli: RunCli, args: list[str], status: int, fragment: str
) -> None:
    def taken(document: Any) -> None:
        section = toml_table(document, "routes", "taken")
        section.update({"to": "https://a.example", "inject": "bearer", "secret": "A"})

    edit_config(home.config_file, home.lock_file, taken)
    before = home.config_file.read_bytes()
    done = run_cli("route", "add", *args)
    assert done.returncode == status, done.stderr
    assert fragment in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert home.config_file.read_bytes() == before


def test_remove_of_an_unknown_route_fails(home: Paths, run_cli: RunCli) -> None:
    before = home.config_file.read_bytes()
    done = run_cli("route", "remove", "nosuch")
    assert (done.returncode, done.stderr) == (
        1,
        "blindkey: no route named nosuch; `blindkey route list` shows them\n",
    )
    assert home.config_file.read_bytes() == before


def test_a_secret_bound_elsewhere_is_warned_about(home: Paths, run_cli: RunCli) -> None:
    done = run_cli("secrets", "set", "GH", "--host", "api.github.com", input="ghp_" + "x" * 36)
    assert done.returncode == 0, done.stderr
    done = run_cli("route", "add", "gh", "--to", "https://api.example.com", "--bearer", "GH")
    assert done.returncode == 0
    assert "secret GH is bound to api.github.com, not api.example.com" in done.stderr


async def test_add_and_remove_are_in_force_when_the_command_returns(home: Paths) -> None:
    async with open_env(home) as env:
        url = f"http://127.0.0.1:{env.server.port}/r/echo/x"
        auth = {"Authorization": f"Bearer {env.token}"}
        for _ in range(2):
            await blindkey(env, "route", "add", "echo", "--to", env.base, "--bearer", "STRIPE_KEY")
            async with env.session.get(url, headers=auth) as response:
                assert response.status == 200
            await blindkey(env, "route", "remove", "echo")
            async with env.session.get(url, headers=auth) as response:
                assert response.status == 404
                assert "no route named 'echo'" in (await response.json())["error"]["message"]


def test_urls_name_the_running_proxy_and_what_an_sdk_takes(home: Paths, run_cli: RunCli) -> None:
    """A proxy on another port than config.toml's: route add and list print its address, and
    the base URL an SDK takes (the vendor's API path added where `to` has none)."""
    assert run_cli("proxy", "start", "--port", "0").returncode == 0
    try:
        port = orjson.loads(home.status_file.read_bytes())["port"]
        assert port != 8765
        done = run_cli("route", "add", "openai", "--to", "https://api.openai.com", "--bearer", "K")
        assert done.returncode == 0, done.stderr
        root = f"http://127.0.0.1:{port}/r/openai"
        assert f"route openai: {root}/... -> https://api.openai.com/..." in done.stdout
        assert f"SDK base URL: {root}/v1" in done.stdout
        (listed,) = orjson.loads(run_cli("route", "list", "--json").stdout)
        assert listed["base_url"] == root and listed["sdk_base_url"] == f"{root}/v1"
        assert f"{root}/v1" in run_cli("route", "list").stdout
    finally:
        assert run_cli("proxy", "stop").returncode == 0


def test_a_secret_that_is_not_set_is_named(home: Paths, run_cli: RunCli) -> None:
    done = run_cli("route", "add", "gh", "--to", "https://api.github.com", "--bearer", "NOPE")
    assert done.returncode == 0, done.stderr
    assert "secret NOPE is not set in the development environment" in done.stderr
    assert "blindkey secrets set NOPE" in done.stderr
    assert run_cli("secrets", "set", "GH", input="ghp_" + "x" * 36 + "\n").returncode == 0
    done = run_cli("route", "add", "gh2", "--to", "https://api.github.com", "--bearer", "GH")
    assert done.returncode == 0, done.stderr
    assert "is not set" not in done.stderr
