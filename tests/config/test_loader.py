"""Loading config.toml: the default works; every kind of mistake is a ConfigError naming where."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from blindkey.config.errors import ConfigError
from blindkey.config.loader import load_settings, parse_duration, parse_size
from blindkey.config.model import Settings
from blindkey.config.secrets_table import SecretPolicy
from blindkey.config.stores import BrokerSettings, OpenBaoSettings
from blindkey.config.template import DEFAULT_CONFIG


def write(tmp_path: Path, text: str | bytes) -> Path:
    file = tmp_path / "config.toml"
    file.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return file


def replaced(old: str, new: str) -> str:
    assert old in DEFAULT_CONFIG, old
    return DEFAULT_CONFIG.replace(old, new, 1)


@pytest.mark.parametrize("text", [DEFAULT_CONFIG, ""], ids=["init-file", "empty-file"])
def test_the_init_file_and_an_empty_file_load_as_the_model_defaults(
    tmp_path: Path, text: str
) -> None:
    # Which values are the defaults is config/model.py's to say; the loader's job is to give
    # exactly those for every key the file leaves out or spells as `blindkey init` does.
    assert load_settings(write(tmp_path, text)) == Settings()


# INTERFACE.md's [proxy] section as documented, every key at the value it documents.
INTERFACE_PROXY_SECTION = """
[proxy]
host = "127.0.0.1"
port = 8765
allow_remote = false
allowed_peers = []
require_agent_token = true
upstream_timeout = "30s"
ca_file = ""
"""


def test_interface_proxy_section_spelled_out_changes_nothing(tmp_path: Path) -> None:
    """Agents rely on the documented defaults (port 8765, loopback, tokens required): a file
    that writes them out must load as one that leaves them out."""
    assert load_settings(write(tmp_path, INTERFACE_PROXY_SECTION)) == Settings()


def test_interface_example_loads(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked for content here\n")
    text = f"""
[proxy]
host = "127.0.0.1"
port = 8765
require_agent_token = false
upstream_timeout = "1500ms"
ca_file = "{ca}"

[allowlist]
hosts = ["api.github.com", "*.stripe.com", "http://127.0.0.1:9000"]
private_ranges = ["10.0.0.0/8", "fd00::/8"]

[secrets.GITHUB_TOKEN]
tier = "open"
hosts = ["api.github.com"]
agents = ["*"]
release = ["proxy"]

[secrets."stripe.live-key"]
tier = "restricted"
hosts = ["*.stripe.com"]
agents = ["billing-bot"]
release = ["proxy", "exec"]
"""
    settings = load_settings(write(tmp_path, text))
    assert settings.proxy.require_agent_token is False
    assert settings.proxy.upstream_timeout == pytest.approx(1.5)
    assert settings.proxy.ca_file == str(ca)
    assert [e.text for e in settings.allowlist.entries] == [
        "api.github.com",
        "*.stripe.com",
        "http://127.0.0.1:9000",
    ]
    assert settings.allowlist.private_ranges == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    github = settings.policy("GITHUB_TOKEN")
    assert github.allows_host("https", "api.github.com", 443)
    assert not github.allows_host("https", "github.com", 443)
    # A bare host is https on port 443, as on the allowlist: not http, not another port.
    assert not github.allows_host("http", "api.github.com", 80)
    assert not github.allows_host("https", "api.github.com", 8443)
    assert github.allows_agent("anyone")
    stripe = settings.policy("stripe.live-key")
    assert stripe.tier == "restricted"
    assert stripe.release == ("proxy", "exec")
    assert stripe.allows_host("https", "api.stripe.com", 443)
    assert not stripe.allows_host("https", "stripe.com", 443)
    assert stripe.allows_agent("billing-bot") and not stripe.allows_agent("other")
    # A name without a [secrets.NAME] table gets the open default policy.
    assert settings.policy("UNLISTED") == SecretPolicy()


# (config text, fragments that must all appear in the message), id
ROUTE = '[routes.openai]\nto = "https://api.openai.com"\ninject = "bearer"\nsecret = "OPENAI_KEY"\n'
BAD_CONFIGS = [
    (
        replaced("port = 8765", "prot = 8765"),
        ["[proxy]", "'prot'", "did you mean 'port'"],
        "typo-key",
    ),
    (
        replaced("upstream_timeout", "upstream_timout"),
        ["[proxy]", "'upstream_timout'", "did you mean 'upstream_timeout'"],
        "typo-long-key",
    ),
    (
        replaced('max_request_body = "10MiB"', 'max_body = "10MiB"'),
        ["[limits]", "unknown key 'max_body'", "max_request_body"],
        "unknown-key-lists-known",
    ),
    (
        DEFAULT_CONFIG + '\n[proxxy]\nhost = "x"\n',
        ["unknown section [proxxy]", "[proxy]"],
        "typo-section",
    ),
    (
        DEFAULT_CONFIG + "\n[telemetry]\non = true\n",
        ["unknown section [telemetry]"],
        "unknown-section",
    ),
    ("proxy = 1\n", ["[proxy] must be a table"], "section-not-table"),
    (
        replaced("port = 8765", 'port = "8765"'),
        ["[proxy] port", "port number", "'8765'"],
        "port-string",
    ),
    (replaced("port = 8765", "port = 70000"), ["[proxy] port", "70000"], "port-range"),
    (replaced("port = 8765", "port = true"), ["[proxy] port", "True"], "port-bool"),
    (
        replaced("require_agent_token = true", 'require_agent_token = "yes"'),
        ["[proxy] require_agent_token", "true or false", "'yes'"],
        "token-flag-string",
    ),
    (
        replaced("require_agent_token = true", "require_agent_token = 1"),
        ["[proxy] require_agent_token", "true or false"],
        "token-flag-int",
    ),
    (replaced('host = "127.0.0.1"', "host = 127"), ["[proxy] host", "127"], "host-int"),
    (
        replaced('"30s"', '"30 parsecs"'),
        ["[proxy] upstream_timeout", "duration", "'30 parsecs'"],
        "bad-duration",
    ),
    (replaced('"30s"', '"0s"'), ["[proxy] upstream_timeout", "greater than zero"], "zero-duration"),
    (replaced('"30s"', "nan"), ["[proxy] upstream_timeout"], "nan-duration"),
    (replaced('"30s"', "inf"), ["[proxy] upstream_timeout"], "inf-duration"),
    (
        replaced('"10MiB"', '"10XB"'),
        ["[limits] max_request_body", "size", "'10XB'"],
        "bad-size",
    ),
    (replaced('"10MiB"', '"1.5MiB"'), ["[limits] max_request_body", "size"], "fractional-size"),
    (replaced('"10MiB"', "0"), ["[limits] max_request_body", "greater than zero"], "zero-size"),
    (
        replaced('kind = "file"', 'kind = "s3"'),
        ["[backend] kind", "'s3'", "file"],
        "bad-backend",
    ),
    (
        replaced("hosts = []", 'hosts = ["ftp://x"]'),
        ["[allowlist] hosts", "'ftp://x'", "http or https"],
        "bad-allowlist-scheme",
    ),
    (
        replaced("hosts = []", 'hosts = ["api.github.com", "2130706433"]'),
        ["[allowlist] hosts", "2130706433", "non-canonical IPv4"],
        "bad-allowlist-ip",
    ),
    (
        replaced("hosts = []", 'hosts = "api.github.com"'),
        ["[allowlist] hosts", "list of strings"],
        "allowlist-not-list",
    ),
    (
        replaced("hosts = []", "hosts = [443]"),
        ["[allowlist] hosts", "list of strings"],
        "allowlist-not-strings",
    ),
    (
        replaced("private_ranges = []", 'private_ranges = ["10.0.0.1/8"]'),
        ["[allowlist] private_ranges", "10.0.0.1/8", "host bits"],
        "cidr-host-bits",
    ),
    (
        replaced("private_ranges = []", 'private_ranges = ["banana"]'),
        ["[allowlist] private_ranges", "'banana'"],
        "cidr-garbage",
    ),
    (
        replaced("private_ranges = []", 'private_ranges = ["10.0.0.0/33"]'),
        ["[allowlist] private_ranges", "10.0.0.0/33"],
        "cidr-bad-prefix",
    ),
    (
        DEFAULT_CONFIG + '\n[secrets."bad name"]\ntier = "open"\n',
        ["[secrets.bad name]", "not a valid secret name"],
        "secret-name-space",
    ),
    (
        DEFAULT_CONFIG + '\n[secrets."9LIVES"]\ntier = "open"\n',
        ["[secrets.9LIVES]", "not a valid secret name"],
        "secret-name-digit-first",
    ),
    (
        DEFAULT_CONFIG + f'\n[secrets.{"A" * 129}]\ntier = "open"\n',
        ["not a valid secret name"],
        "secret-name-too-long",
    ),
    (
        DEFAULT_CONFIG + '\n[secrets.GITHUB_TOKEN]\ntier = "secret"\n',
        ["[secrets.GITHUB_TOKEN] tier", "open, controlled, restricted", "'secret'"],
        "bad-tier",
    ),
    (
        DEFAULT_CONFIG + '\n[secrets.GITHUB_TOKEN]\nrelease = ["proxy", "email"]\n',
        ["[secrets.GITHUB_TOKEN] release", "proxy, env, exec", "'email'"],
        "bad-release",
    ),
    (
        DEFAULT_CONFIG + '\n[secrets.GITHUB_TOKEN]\nrelease = "proxy"\n',
        ["[secrets.GITHUB_TOKEN] release", "list of strings"],
        "release-not-list",
    ),
    (
        DEFAULT_CONFIG + '\n[secrets.GITHUB_TOKEN]\nhosts = ["*foo.com"]\n',
        ["[secrets.GITHUB_TOKEN] hosts", "wildcard"],
        "bad-secret-host",
    ),
    (
        DEFAULT_CONFIG + '\n[secrets.GITHUB_TOKEN]\ntire = "open"\n',
        ["[secrets.GITHUB_TOKEN]", "'tire'", "did you mean 'tier'"],
        "secret-typo-key",
    ),
    ("secrets = 1\n", ["[secrets] must be a table"], "secrets-not-table"),
    (
        "[secrets]\nGITHUB_TOKEN = 1\n",
        ["[secrets.GITHUB_TOKEN] must be a table"],
        "secret-not-table",
    ),
    (
        replaced('active = "development"', 'active = "prod"'),
        ["[environments] active", "'prod'", "development"],
        "active-env-unknown",
    ),
    (
        replaced('names = ["development", "staging", "production"]', 'names = ["dev"]'),
        ["[environments] active", "'development'", "['dev']"],
        "active-env-not-in-custom-names",
    ),
    (
        replaced('ca_file = ""', 'ca_file = "/nonexistent/blindkey/ca.pem"'),
        ["[proxy] ca_file", "no such file", "/nonexistent/blindkey/ca.pem"],
        "ca-file-missing",
    ),
    (DEFAULT_CONFIG + "\n[proxy\n", ["invalid TOML", "line"], "toml-unclosed-table"),
    (DEFAULT_CONFIG + "\n[proxy]\n", ["invalid TOML"], "toml-duplicate-table"),
    ("[proxy]\nport = 1\nport = 2\n", ["invalid TOML"], "toml-duplicate-key"),
    ("[proxy]\nhost = 'unterminated\n", ["invalid TOML"], "toml-unterminated-string"),
    # [routes.NAME], [approvals], [audit] rotate_mb/keep_days, [secrets.NAME] approvals
    (
        ROUTE.replace("https://api.openai.com", "api.openai.com"),
        ["[routes.openai] to", "http(s)"],
        "route-to-not-a-url",
    ),
    (
        ROUTE.replace('inject = "bearer"\n', ""),
        ["[routes.openai] inject", "required"],
        "route-inject-missing",
    ),
    (
        ROUTE.replace('"bearer"', '"cookie"'),
        ["[routes.openai] inject", "one of"],
        "route-inject-unknown",
    ),
    (
        ROUTE.replace('"OPENAI_KEY"', '"9 lives"'),
        ["[routes.openai] secret"],
        "route-secret-bad-name",
    ),
    (
        ROUTE.replace('"bearer"', '"header"'),
        ["[routes.openai] name", "required"],
        "route-header-needs-name",
    ),
    (
        ROUTE.replace("[routes.openai]", '[routes."a b"]'),
        ["not a valid route name"],
        "route-name-invalid",
    ),
    (ROUTE + "port = 1\n", ["[routes.openai]", "port"], "route-unknown-key"),
    (
        '[approvals]\ncontrolled_ttl = "0s"\n',
        ["[approvals] controlled_ttl", "greater than zero"],
        "approvals-ttl-zero",
    ),
    (
        '[approvals]\nrestricted_ttl = "soon"\n',
        ["[approvals] restricted_ttl", "duration"],
        "approvals-ttl-not-duration",
    ),
    ("[approvals]\nforever = true\n", ["[approvals]", "forever"], "approvals-unknown-key"),
    ("[audit]\nrotate_mb = 0\n", ["[audit] rotate_mb"], "audit-rotate-mb-zero"),
    ('[audit]\nkeep_days = "90"\n', ["[audit] keep_days"], "audit-keep-days-string"),
    ("[secrets.GH]\napprovals = 0\n", ["[secrets.GH] approvals"], "secret-approvals-zero"),
    (
        '[secrets.GH]\nallow_range = "yes"\n',
        ["[secrets.GH] allow_range", "true or false"],
        "secret-allow-range-not-bool",
    ),
]


@pytest.mark.parametrize(
    ("text", "fragments"), [c[:2] for c in BAD_CONFIGS], ids=[c[2] for c in BAD_CONFIGS]
)
def test_bad_config_names_file_key_and_problem(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(file)
    message = str(info.value)
    assert message.startswith(f"{file}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message  # the CLI prints exactly one line


def test_ca_file_that_exists_is_accepted(tmp_path: Path) -> None:
    ca = tmp_path / "extra-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings(write(tmp_path, replaced('ca_file = ""', f'ca_file = "{ca}"')))
    assert settings.proxy.ca_file == str(ca)


def test_ca_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[proxy\] ca_file"):
        load_settings(write(tmp_path, replaced('ca_file = ""', f'ca_file = "{tmp_path}"')))


def test_non_utf8_bytes(tmp_path: Path) -> None:
    file = write(tmp_path, b"\xff\xfe" + DEFAULT_CONFIG.encode())
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_settings(file)
    assert str(info.value).startswith(str(file))


def test_latin1_comment_is_not_utf8(tmp_path: Path) -> None:
    file = write(tmp_path, DEFAULT_CONFIG.encode() + "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(file)


def test_missing_file_says_how_to_create_it(tmp_path: Path) -> None:
    file = tmp_path / "nowhere" / "config.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(file)
    assert str(info.value) == f"{file}: no such file; run `blindkey init` to create it"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "config.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_settings(folder)
    assert str(info.value).startswith(str(folder))


def test_port_zero_is_allowed_for_an_ephemeral_port(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, replaced("port = 8765", "port = 0"))).proxy.port == 0


def test_numeric_durations_and_sizes_are_accepted(tmp_path: Path) -> None:
    text = replaced('"30s"', "2.5")
    text = text.replace('"10MiB"', "4096", 1)
    settings = load_settings(write(tmp_path, text))
    assert settings.proxy.upstream_timeout == 2.5
    assert settings.limits.max_request_body == 4096


DURATIONS = [
    ("30s", 30.0),
    ("500ms", 0.5),
    ("2m", 120.0),
    ("1h", 3600.0),
    ("1.5s", 1.5),
    ("45", 45.0),
    (" 5 s ", 5.0),
    (10, 10.0),
    (0.25, 0.25),
]


@pytest.mark.parametrize(("value", "seconds"), DURATIONS, ids=[repr(v) for v, _ in DURATIONS])
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


BAD_DURATIONS = [
    "",
    "s",
    "30x",
    "30 parsecs",
    "1e3",
    "-5s",
    "5s5",
    "1d",
    "0s",
    "0",
    0,
    -1,
    True,
    False,
]


@pytest.mark.parametrize("value", BAD_DURATIONS, ids=[repr(v) for v in BAD_DURATIONS])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"]
)
def test_parse_duration_rejects_non_finite(value: float) -> None:
    # TOML has `nan` and `inf`; neither is a timeout anyone can wait for.
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


SIZES = [
    ("10MiB", 10 * 2**20),
    ("512KiB", 512 * 1024),
    ("1GiB", 2**30),
    ("1KB", 1000),
    ("2MB", 2 * 10**6),
    ("1GB", 10**9),
    ("100B", 100),
    ("100", 100),
    (" 64 KiB ", 64 * 1024),
    (4096, 4096),
]


@pytest.mark.parametrize(("value", "size"), SIZES, ids=[repr(v) for v, _ in SIZES])
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


BAD_SIZES = ["", "MiB", "10XB", "10mib", "1.5MiB", "-1KiB", "0", "0MiB", 0, -5, 1.5, True]


@pytest.mark.parametrize("value", BAD_SIZES, ids=[repr(v) for v in BAD_SIZES])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


# --- where values live: [backend], [remote], [environments], [broker] ----------------------


def test_openbao_backend_and_remote_load(tmp_path: Path) -> None:
    ca = tmp_path / "bao-ca.pem"
    ca.write_text("checked for existence only\n")
    text = replaced(
        'kind = "file"',
        f'kind = "openbao"\naddress = "https://bao.example.com:8200/"\nmount = "/kv/"\n'
        f'prefix = "team/blindkey"\nnamespace = "eng"\nca_file = "{ca}"\n'
        'auth = "approle"\nrole_id = "r-1"\nsecret_id_file = "/run/secrets/sid"',
    )
    text = text.replace('cache_ttl = "5m"', 'cache_ttl = "90s"')
    text += '\n[remote]\naddress = "http://127.0.0.1:8200"\ntoken_file = "~/.bao-token"\n'
    text = text.replace("allowed_uids = []", "allowed_uids = [0, 1001]")
    text = text.replace('socket = ""', 'socket = "/run/blindkey/broker.sock"')
    settings = load_settings(write(tmp_path, text))
    assert settings.backend == "openbao"
    assert settings.storage.cache_ttl == 90.0
    assert settings.storage.openbao == OpenBaoSettings(
        address="https://bao.example.com:8200",
        mount="kv",
        prefix="team/blindkey",
        namespace="eng",
        ca_file=str(ca),
        auth="approle",
        role_id="r-1",
        secret_id_file="/run/secrets/sid",
    )
    assert settings.remote == OpenBaoSettings(
        address="http://127.0.0.1:8200", token_file="~/.bao-token"
    )
    assert settings.broker == BrokerSettings("/run/blindkey/broker.sock", (0, 1001))


def test_keyring_backend_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, replaced('kind = "file"', 'kind = "keyring"')))
    assert settings.backend == settings.storage.kind == "keyring"
    assert settings.storage.openbao is None


def test_custom_environments(tmp_path: Path) -> None:
    text = replaced(
        'names = ["development", "staging", "production"]', 'names = ["dev", "prod-eu", "qa_2"]'
    ).replace('active = "development"', 'active = "prod-eu"')
    settings = load_settings(write(tmp_path, text))
    assert settings.environments == ("dev", "prod-eu", "qa_2")
    assert settings.active_env == "prod-eu"


ENVS = 'names = ["development", "staging", "production"]'
STORE_ERRORS = [
    (
        replaced('kind = "file"', 'kind = "openbao"'),
        ["[backend] address", "required"],
        "openbao-without-address",
    ),
    (
        replaced('kind = "file"', 'kind = "keyring"\naddress = "https://b:8200"'),
        ["[backend] address", 'only used with kind = "openbao"', "[remote]"],
        "openbao-key-on-keyring",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "bao.example.com"'),
        ["[backend] address", "http(s) URL", "'bao.example.com'"],
        "address-without-scheme",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "https://b:8200/v1/secret"'),
        ["[backend] address", "scheme, host and port only"],
        "address-with-path",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "https://b:99999"'),
        ["[backend] address", "99999"],
        "address-bad-port",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "https://b"\nauth = "ldap"'),
        ["[backend] auth", "token, approle", "'ldap'"],
        "bad-auth",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "https://b"\nauth = "approle"'),
        ["[backend]", "approle", "role_id and secret_id_file"],
        "approle-incomplete",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "https://b"\nmount = "a/../b"'),
        ["[backend] mount", "a/../b"],
        "mount-dotdot",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "https://b"\nprefix = "a b"'),
        ["[backend] prefix", "'a b'"],
        "prefix-space",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "https://b"\nca_file = "/no/ca"'),
        ["[backend] ca_file", "no such file", "/no/ca"],
        "ca-missing",
    ),
    (
        replaced('kind = "file"', 'kind = "openbao"\naddress = "https://b"\nadress = "x"'),
        ["[backend]", "'adress'", "did you mean 'address'"],
        "backend-typo",
    ),
    (
        replaced('cache_ttl = "5m"', 'cache_ttl = "forever"'),
        ["[backend] cache_ttl", "duration"],
        "bad-ttl",
    ),
    (DEFAULT_CONFIG + '\n[remote]\nmount = "kv"\n', ["[remote] address", "required"], "remote"),
    (
        DEFAULT_CONFIG + '\n[remote]\naddress = "https://b"\nkind = "openbao"\n',
        ["[remote]", "unknown key 'kind'"],
        "remote-kind",
    ),
    (replaced(ENVS, "names = []"), ["[environments] names", "at least one"], "no-envs"),
    (
        replaced(ENVS, 'names = ["dev", "dev"]').replace('"development"', '"dev"'),
        ["[environments] names", "repeat"],
        "env-repeated",
    ),
    (
        replaced(ENVS, 'names = ["dev/../x", "development"]'),
        ["[environments] names", "invalid environment name 'dev/../x'"],
        "env-slash",
    ),
    (
        replaced("allowed_uids = []", 'allowed_uids = ["root"]'),
        ["[broker] allowed_uids", "numeric user ids"],
        "uid-name",
    ),
    (
        replaced("allowed_uids = []", "allowed_uids = [-1]"),
        ["[broker] allowed_uids", "[-1]"],
        "uid-negative",
    ),
    (replaced('socket = ""', "socket = 1"), ["[broker] socket", "socket path"], "socket-int"),
]


@pytest.mark.parametrize(
    ("text", "fragments"), [c[:2] for c in STORE_ERRORS], ids=[c[2] for c in STORE_ERRORS]
)
def test_bad_store_config_names_file_key_and_problem(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(file)
    message = str(info.value)
    assert message.startswith(f"{file}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message


def test_audit_fsync_switch(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text("[audit]\nfsync = false\n")
    assert load_settings(file).audit_fsync is False
    file.write_text("")
    assert load_settings(file).audit_fsync is True
    file.write_text('[audit]\nfsync = "no"\n')
    with pytest.raises(ConfigError, match=r"\[audit\] fsync"):
        load_settings(file)


def test_routes_approvals_and_audit_keys_load(tmp_path: Path) -> None:
    text = (
        ROUTE.replace('"bearer"', '"header"').replace("https://api.openai.com", "https://x.io/")
        + 'name = "x-api-key"\n'
        + '[approvals]\ncontrolled_ttl = "1h"\nrestricted_ttl = "5m"\nelevate_ttl = "10m"\n'
        + "[audit]\nrotate_mb = 8\nkeep_days = 7\n"
        + '[secrets.GH]\ntier = "restricted"\napprovals = 2\nallow_range = true\n'
    )
    settings = load_settings(write(tmp_path, text))
    route = settings.routes["openai"]
    assert (route.to, route.style, route.secret, route.param) == (
        "https://x.io",
        "header",
        "OPENAI_KEY",
        "x-api-key",
    )
    assert settings.approvals.grant_ttl("controlled") == 3600
    assert settings.approvals.grant_ttl("restricted") == 300
    assert settings.approvals.grant_ttl("open") is None
    assert settings.approvals.elevate_ttl == 600
    assert (settings.audit.rotate_mb, settings.audit.keep_days) == (8, 7)
    assert settings.policy("GH").approvals == 2
    assert settings.policy("GH").allow_range and not settings.policy("OTHER").allow_range
