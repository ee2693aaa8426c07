"""Each config key is declared once: the template, the loader and the docs all follow it.

A key added to a model must appear in the file `blindkey init` writes, read back to the
value it was written with, be the only spelling the loader accepts, and be documented in
docs/configuration.md, with no second list to update by hand.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from blindkey.config.docs import REGENERATE, configuration_markdown
from blindkey.config.edit import toml_table
from blindkey.config.errors import ConfigError
from blindkey.config.fields import keys, sections
from blindkey.config.home import init_config
from blindkey.config.hosts import AllowEntry
from blindkey.config.loader import load_settings, parse_settings
from blindkey.config.model import (
    AllowlistSettings,
    ApprovalSettings,
    AuditSettings,
    LimitSettings,
    ProxySettings,
    Route,
    Settings,
)
from blindkey.config.outputs import MetricsSettings, NotifySettings, ShipSettings
from blindkey.config.paths import resolve_paths
from blindkey.config.request_rules import AgentPolicy, PolicySettings, parse_rate
from blindkey.config.secrets_table import SecretPolicy
from blindkey.config.spend import Budget, ModelPrice
from blindkey.config.stores import (
    BackendSettings,
    BrokerSettings,
    EnvironmentSettings,
    OpenBaoSettings,
)
from blindkey.config.template import DEFAULT_CONFIG, declared_keys, render

ROOT = Path(__file__).resolve().parents[2]
_HEADER = re.compile(r"^(?:# )?\[([A-Za-z_]+)((?:\.[^\]]+)?)\]")
# Tables inside a table ([audit.ship]), as opposed to one table per name ([secrets.NAME]).
_INNER = {section.name for section in sections(Settings) if "." in section.name}
_KEY_LINE = re.compile(r"^(?:# )?([A-Za-z_]+) = ")


def template_keys(text: str) -> dict[str, list[str]]:
    """Each table of a rendered config.toml and the keys written in it, live or commented."""
    found: dict[str, list[str]] = {}
    table = ""
    for line in text.splitlines():
        if header := _HEADER.match(line):
            table = header.group(1) + header.group(2)
            table = table if table in _INNER else header.group(1)
            found.setdefault(table, [])
        elif (key := _KEY_LINE.match(line)) and table:
            found[table].append(key.group(1))
    return found


def test_the_template_writes_every_declared_key_of_every_table() -> None:
    declared = {table: [key.name for key in found] for table, found in declared_keys().items()}
    # Before keys were declared once, [secrets.NAME] allow_short was read but never shown.
    assert template_keys(DEFAULT_CONFIG) == declared


def test_every_key_has_something_for_the_docs_to_say() -> None:
    for table, found in declared_keys().items():
        for key in found:
            assert key.meaning, f"[{table}] {key.name}: give it a comment or a doc"


def everything_changed(tmp_path: Path) -> Settings:
    """Settings in which every declared key differs from its default."""
    ca = tmp_path / "ca.pem"
    ca.write_text("checked for existence only\n")
    return Settings(
        proxy=ProxySettings(
            "10.1.2.3", 9000, True, (ipaddress.ip_network("10.0.0.0/8"),), False, 1.5, str(ca)
        ),
        limits=LimitSettings(1234, 2**15, 50, 10, 0.5, 60.0, 7200.0, 3.0, 2.25, 100.0),
        storage=BackendSettings(
            "openbao",
            90.0,
            OpenBaoSettings(
                "https://bao.example.com:8200",
                "kv",
                "team/x",
                "eng",
                str(ca),
                "approle",
                "/t",
                "r",
                "/s",
            ),
        ),
        remote=OpenBaoSettings(
            "http://127.0.0.1:8200", "kv2", "p", "ns", str(ca), "approle", "/tok", "role", "/sid"
        ),
        envs=EnvironmentSettings(("dev", "prod-eu"), "prod-eu"),
        broker=BrokerSettings("/run/blindkey/broker.sock", (0, 1001), (1002,)),
        audit=AuditSettings(False, 8, 7, 500),
        metrics=MetricsSettings("127.0.0.1:9465"),
        audit_ship=ShipSettings(
            "tls://siem.example.com:6514", "http://otel:4318", str(ca), True, "/run/journal.sock"
        ),
        approvals=ApprovalSettings(3600.0, 300.0, 600.0),
        notify=NotifySettings(False, "https://ntfy.example/blindkey-approvals", "slack"),
        allowlist=AllowlistSettings(
            (AllowEntry.parse("api.github.com"), AllowEntry.parse("http://127.0.0.1:9000")),
            (ipaddress.ip_network("fd00::/8"),),
        ),
        secrets={
            "GITHUB_TOKEN": SecretPolicy(
                "restricted",
                (AllowEntry.binding("api.github.com"),),
                ("bot",),
                ("proxy", "env"),
                True,
                2,
                True,
                ("GET", "PATCH"),
                ("/repos/acme/*", "/user"),
                parse_rate("120/min"),
                placeholder_prefix="ghp_",
                kind="github-app",
                region="eu-west-1",
                role_arn="arn:aws:iam::123456789012:role/reader",
                sts_url="https://sts.eu-west-1.amazonaws.com/",
                token_url="https://oauth2.example.com/token",
                client_id="cid",
                scope="repo",
                grant="client_credentials",
                client_auth="post",
                app_id="12",
                installation_id="34",
                api_url="https://ghe.example.com/api/v3",
            ),
            "stripe.live-key": SecretPolicy(tier="controlled"),
        },
        agents={
            "builder": AgentPolicy(
                ("GET",), ("/v1/**",), parse_rate("10/s"), Budget(5.0, 50.0, 4.0)
            )
        },
        request_policy=PolicySettings("report"),
        prices={"gpt-4o-mini": ModelPrice(0.15, 0.6)},
        routes={"openai": Route("https://api.openai.com", "header", "OPENAI_API_KEY", "x-api-key")},
    )


def models_of(settings: Settings) -> list[tuple[str, type, Any]]:
    """(table, model, value) for every table the settings hold a value of."""
    found: list[tuple[str, type, Any]] = []
    for section in sections(Settings):
        value = getattr(settings, section.attr)
        values = list(value.values()) if section.named else [value]
        found += [(section.name, section.model, item) for item in values if item is not None]
    found.append(("backend", OpenBaoSettings, settings.storage.openbao))
    return found


def test_the_sample_changes_every_key(tmp_path: Path) -> None:
    # Keeps the round trip below complete: a new key fails here until the sample sets it.
    changed = everything_changed(tmp_path)
    partial = changed.secrets["stripe.live-key"]  # a second table, to show names that need quotes
    for table, model, value in models_of(changed):
        for key in keys(model) if value is not partial else ():
            assert getattr(value, key.attr) != key.default, f"[{table}] {key.name}"


@pytest.mark.parametrize("which", ["defaults", "everything-changed"])
def test_a_rendered_config_reads_back_as_the_settings_it_was_rendered_from(
    tmp_path: Path, which: str
) -> None:
    settings = Settings() if which == "defaults" else everything_changed(tmp_path)
    file = tmp_path / "config.toml"
    file.write_text(render(settings))
    assert load_settings(file) == settings


def test_the_default_template_is_the_rendered_defaults() -> None:
    assert render(Settings()) == DEFAULT_CONFIG
    assert parse_settings(Path("config.toml"), tomllib.loads(DEFAULT_CONFIG)) == Settings()


def undeclared_key_cases() -> list[tuple[str, str, list[str]]]:
    """(config text, table as the message names it, the keys it must list) per table."""
    cases = []
    for section in sections(Settings):
        table = f"{section.name}.{section.example_name}" if section.named else section.name
        cases.append((f"[{table}]\nbogus_key = 1\n", table, [k.name for k in keys(section.model)]))
    return cases


@pytest.mark.parametrize(
    ("text", "table", "known"), undeclared_key_cases(), ids=[c[1] for c in undeclared_key_cases()]
)
def test_an_undeclared_key_is_refused_naming_the_declared_ones(
    tmp_path: Path, text: str, table: str, known: list[str]
) -> None:
    file = tmp_path / "config.toml"
    file.write_text(text)
    if table == "routes.openai":  # a route needs its keys: give them, so only the stray fails
        file.write_text(text + 'to = "https://x.io"\ninject = "bearer"\nsecret = "K"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(file)
    assert str(info.value) == (
        f"{file}: [{table}] unknown key 'bogus_key'; known keys: {', '.join(known)}"
    )


def test_an_undeclared_table_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text("[proxyy]\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(file)
    assert str(info.value) == f"{file}: unknown section [proxyy] (did you mean [proxy]?)"


def test_openbao_keys_in_backend_are_the_declared_ones(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text('[backend]\nkind = "openbao"\naddress = "https://b:8200"\nbogus_key = 1\n')
    with pytest.raises(ConfigError) as info:
        load_settings(file)
    known = ["kind", "cache_ttl"] + [key.name for key in keys(OpenBaoSettings)]
    assert str(info.value).endswith(f"known keys: {', '.join(known)}")


def test_docs_configuration_md_is_what_the_declarations_generate() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text("utf-8")
    assert committed == configuration_markdown(), (
        f"docs/configuration.md is stale: run `{REGENERATE}`"
    )


def test_the_docs_entry_point_prints_the_same_text() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "blindkey.config.docs"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert done.stdout == configuration_markdown()


def test_the_docs_name_every_declared_key_of_every_table() -> None:
    text = configuration_markdown()
    for section in sections(Settings):
        title = f"[{section.name}.NAME]" if section.named else f"[{section.name}]"
        part = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
        for key in keys(section.model):
            assert f"| `{key.name}` |" in part, (title, key.name)


def test_init_with_openbao_writes_a_file_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.setenv("BAO_ADDR", "https://bao.example.com:8200")
    monkeypatch.setenv("BLINDKEY_HOME", str(tmp_path / "home"))
    paths = resolve_paths()
    assert init_config(paths, "openbao")
    settings = load_settings(paths.config_file)
    assert settings.storage.openbao == OpenBaoSettings(address="https://bao.example.com:8200")


@pytest.mark.parametrize("table", [s.name for s in sections(Settings) if s.named])
def test_a_cli_edit_writes_a_named_table_without_a_bare_parent(table: str) -> None:
    # `route add` used to leave an empty `[routes]` line above `[routes.NAME]`.
    document = tomlkit.parse("[proxy]\nport = 8765\n")
    toml_table(document, table, "ONE")["x"] = 1
    assert f"\n[{table}]" not in tomlkit.dumps(document)
    assert f"\n[{table}.ONE]\n" in tomlkit.dumps(document)
