"""Policy per request, as the broker decides it: methods and paths of a secret or an agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from blindkey.broker.rules import THIS_REQUEST, RuleSet, path_forms
from blindkey.config.errors import ConfigError
from blindkey.config.loader import parse_settings
from blindkey.config.model import Settings
from blindkey.config.request_rules import AgentPolicy
from blindkey.config.secrets_table import SecretPolicy


def rules(**policy: object) -> RuleSet:
    settings = Settings(secrets={"GH": SecretPolicy(**policy)})  # type: ignore[arg-type]
    return RuleSet.empty(lambda: 0.0).reload(settings)


def allowed(globs: tuple[str, ...], path: str | None, method: str = "GET") -> bool:
    verdict = rules(paths=globs).decide("claude", ["GH"], method, path)
    return verdict.denied is None


PATHS = [
    # globs, path as sent (raw, no query), allowed
    (("/user",), "/user", True),
    (("/user",), "/user/", True),  # a trailing slash makes no other path
    (("/user",), "/users", False),
    (("/user",), "/user/emails", False),
    (("/user",), "/User", False),  # paths are case-sensitive
    (("/user",), "/", False),
    (("/user",), "", False),
    (("/",), "/", True),
    (("/",), "", True),
    (("/",), "/x", False),
    # `*`: exactly one segment, never an empty one
    (("/repos/acme/*",), "/repos/acme/widgets", True),
    (("/repos/acme/*",), "/repos/acme/widgets/", True),
    (("/repos/acme/*",), "/repos/acme/", False),
    (("/repos/acme/*",), "/repos/acme", False),
    (("/repos/acme/*",), "/repos/acme/widgets/issues", False),
    (("/repos/acme/*",), "/repos/ACME/widgets", False),
    (("/repos/acme/*",), "/repos/acmeco/widgets", False),
    (("/repos/*/issues",), "/repos/acme/issues", True),
    (("/repos/*/issues",), "/repos/acme/pulls", False),
    (("/v1/*.json",), "/v1/models.json", True),
    (("/v1/*.json",), "/v1/models.xml", False),
    (("/v1/*.json",), "/v1/a/b.json", False),
    # `**`: any number of segments, none included
    (("/repos/acme/**",), "/repos/acme", True),
    (("/repos/acme/**",), "/repos/acme/widgets/issues/7", True),
    (("/repos/acme/**",), "/repos/acmeco/widgets", False),
    (("/repos/acme/**",), "/repos", False),
    (("/**",), "/anything/at/all", True),
    (("/repos/**/comments",), "/repos/acme/w/issues/7/comments", True),
    (("/repos/**/comments",), "/repos/comments", True),
    (("/repos/**/comments",), "/repos/acme/w/issues/7", False),
    # dot segments: decided on the path as resolved AND as sent
    (("/repos/acme/*",), "/repos/acme/./widgets", True),
    (("/repos/acme/**",), "/repos/acme/widgets/../gadgets", True),
    (("/repos/acme/**",), "/repos/acme/../../admin", False),
    (("/repos/acme/**",), "/repos/acme/%2e%2e/%2E%2E/admin", False),
    (("/repos/acme/*",), "/admin/../repos/acme/widgets", False),  # an upstream may not resolve
    (("/repos/acme/*",), "/repos/acme/widgets/..", False),
    (("/repos/*/issues",), "/repos/../issues", False),
    (("/repos/acme/**",), "/repos/acme//..//../admin", False),
    (("/admin",), "/../admin", False),  # as sent, `..` is a segment no glob names
    # encoded slashes and backslashes are refused where path rules apply
    (("/repos/acme/*",), "/repos/acme/x%2F..%2F..%2Fadmin", False),
    (("/repos/acme/**",), "/repos/acme/x%2fy", False),
    (("/repos/acme/**",), "/repos/acme/x%5Cy", False),
    (("/repos/acme/**",), "/repos/acme/x\\..\\..\\admin", False),
    (("/repos/acme/**",), "/repos/acme/x%252Fy", False),  # encoded twice
    (("/repos/acme/**",), "/repos/acme/%252e%252e/x", False),
    # other escapes are decoded before matching
    (("/repos/acme/*",), "/repos/%61cme/widgets", True),
    (("/files/*",), "/files/a%20b", True),
    # empty segments are merged
    (("/repos/acme/*",), "/repos//acme/widgets", True),
    # the query and fragment are no part of the path (the proxy sends neither)
    (("/user",), "/user?admin=1", True),
    (("/user",), "/admin?/user", False),
    (("/user",), "/user#x", True),
    # several globs: any one
    (("/user", "/repos/acme/*"), "/repos/acme/x", True),
    (("/user", "/repos/acme/*"), "/orgs/acme", False),
    # no path given: refused
    (("/**",), None, False),
]


@pytest.mark.parametrize(("globs", "path", "expected"), PATHS)
def test_paths(globs: tuple[str, ...], path: str | None, expected: bool) -> None:
    assert allowed(globs, path) is expected


@pytest.mark.parametrize(
    ("methods", "method", "expected"),
    [
        (("GET",), "GET", True),
        (("GET",), "get", True),
        (("get",), "GET", True),
        (("GET",), "POST", False),
        (("GET",), "DELETE", False),
        (("GET",), "", False),
        (("GET", "PATCH"), "patch", True),
        ((), "DELETE", True),
    ],
)
def test_methods_are_case_insensitive(
    methods: tuple[str, ...], method: str, expected: bool
) -> None:
    assert (rules(methods=methods).decide("claude", ["GH"], method, "/").denied is None) is (
        expected
    )


def test_a_refusal_names_its_rule() -> None:
    verdict = rules(methods=("GET",), paths=("/user",)).decide("claude", ["GH"], "DELETE", "/x")
    assert verdict.denied is not None
    assert verdict.denied.code == "secret_denied"
    assert verdict.denied.detail == "secrets.GH.methods"
    assert "GET" in str(verdict.denied) and "DELETE" in str(verdict.denied)
    verdict = rules(methods=("GET",), paths=("/user",)).decide("claude", ["GH"], "GET", "/x")
    assert verdict.denied is not None and verdict.denied.detail == "secrets.GH.paths"
    assert "/user" in str(verdict.denied) and verdict.varies == THIS_REQUEST


def test_agent_rules_apply_to_every_secret_it_uses() -> None:
    settings = Settings(
        secrets={"GH": SecretPolicy(), "OTHER": SecretPolicy(paths=("/**",))},
        agents={"builder": AgentPolicy(methods=("GET",), paths=("/v1/**",))},
    )
    ruleset = RuleSet.empty(lambda: 0.0).reload(settings)
    assert ruleset.decide("builder", ["GH"], "GET", "/v1/models").denied is None
    refused = ruleset.decide("builder", ["GH"], "POST", "/v1/models").denied
    assert refused is not None and refused.detail == "agents.builder.methods"
    refused = ruleset.decide("builder", ["OTHER"], "GET", "/v2/x").denied
    assert refused is not None and refused.detail == "agents.builder.paths"
    # Another agent: only the secret's own rules.
    assert ruleset.decide("claude", ["GH"], "POST", "/v2/x").denied is None
    # Who the caller is (no names): no rule applies.
    assert ruleset.decide("builder", [], "POST", "/v2/x").denied is None


def test_no_rules_cost_nothing_and_vary_with_nothing() -> None:
    verdict = RuleSet.empty(lambda: 0.0).reload(Settings()).decide("a", ["GH"], "DELETE", None)
    assert verdict.denied is None and verdict.varies == ""


def test_path_forms_are_computed_once_per_path() -> None:
    path_forms.cache_clear()
    for _ in range(3):
        path_forms("/repos/acme/x")
    assert path_forms.cache_info().hits == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("paths", '["repos/*"]', 'starts with "/"'),
        ("paths", '["/repos?x=1"]', "query"),
        ("paths", '["/repos/a**"]', "whole segment"),
        ("methods", '["GET POST"]', "HTTP method"),
        ("rate", '"120"', "rate such as"),
        ("rate", '"0/min"', "rate such as"),
        ("rate", '"5/fortnight"', "rate such as"),
        ("rate", "5", "rate such as"),
    ],
)
def test_bad_rules_are_refused_at_load_naming_the_key(key: str, value: str, message: str) -> None:
    import tomllib

    data = tomllib.loads(f"[secrets.GH]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"\[secrets\.GH\] {key}: .*{message}"):
        parse_settings(Path("config.toml"), data)
    agent_data = {"agents": {"builder": data["secrets"]["GH"]}}
    with pytest.raises(ConfigError, match=rf"\[agents\.builder\] {key}"):
        parse_settings(Path("config.toml"), agent_data)
