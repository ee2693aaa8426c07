"""The use cases of `blindkey secrets set|delete|policy|import`: a value stored with its
policy, a value deleted, a policy changed, many values stored in one change. Each change
of config.toml goes through the broker's acceptance (a code when it widens or lowers a
secret's protection) and is put in force in running proxies before the command returns."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from blindkey.broker.approvals_link import call, with_code
from blindkey.broker.backends import SecretBackend, open_backend
from blindkey.broker.credentials.kinds import check_kind, checked_value, set_kind
from blindkey.broker.notify import put_in_force
from blindkey.broker.policy_link import change_policy, record
from blindkey.config.console import warn
from blindkey.config.edit import string_array, toml_table
from blindkey.config.errors import BlindkeyError, UsageError
from blindkey.config.hosts import AllowEntry, HostError
from blindkey.config.loader import load_settings
from blindkey.config.model import AGENT_NAME, MAX_VALUE_BYTES, MIN_REDACTABLE, SECRET_NAME, Settings
from blindkey.config.paths import Paths
from blindkey.config.secrets_table import RELEASE_CHANNELS, SecretPolicy


def check_name(name: str) -> str:
    # fullmatch: the pattern's `$` would also accept a trailing newline.
    if not SECRET_NAME.fullmatch(name):
        raise BlindkeyError(
            f"invalid secret name {name!r}: start with a letter or '_', then letters, digits, "
            "'_', '.', '-' (at most 128 characters)"
        )
    return name


def pick_env(settings: Settings, requested: str | None) -> str:
    env = requested or settings.active_env
    if env not in settings.environments:
        raise BlindkeyError(
            f"unknown environment {env!r}; known: {', '.join(settings.environments)}"
        )
    return env


@contextlib.contextmanager
def opened(backend: SecretBackend) -> Iterator[SecretBackend]:
    try:
        yield backend
    finally:
        backend.close()


def local_store(paths: Paths, settings: Settings) -> SecretBackend:
    return open_backend(paths, settings)


def inventory(store: SecretBackend, settings: Settings) -> dict[str, set[str]]:
    return {env: store.names(env) for env in settings.environments}


def release_channels(given: str | None) -> list[str]:
    """`--release proxy,env` as a list; empty when not given (the policy stays as it is)."""
    if given is None:
        return []
    channels = [part.strip() for part in given.split(",") if part.strip()]
    unknown = [c for c in channels if c not in RELEASE_CHANNELS]
    if unknown or not channels:
        raise UsageError(
            f"--release {given!r}: a comma-separated list of {', '.join(RELEASE_CHANNELS)}"
        )
    return list(dict.fromkeys(channels))


@dataclass(frozen=True)
class NewSecret:
    """What `secrets set` was asked: a value and the policy to store with it."""

    name: str
    env: str | None = None
    tier: str | None = None
    hosts: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    release: str | None = None
    approvals: int | None = None
    allow_short: bool = False
    # A computed secret's kind (None: the kind it has; a new secret: "value") and its
    # [secrets.NAME] keys (token_url, client_id, ...).
    kind: str | None = None
    credential: dict[str, str] = field(default_factory=dict)
    region: str | None = None  # aws: the region signed for when the host names none
    by: str | None = None
    code: str | None = None
    anyway: bool = False


@dataclass(frozen=True)
class Stored:
    name: str
    env: str
    policy: SecretPolicy


def _bindings(flag: str, texts: list[str], error: type[BlindkeyError]) -> list[AllowEntry]:
    try:
        return [AllowEntry.binding(text) for text in texts]
    except HostError as exc:
        raise error(f"{flag}: {exc}") from None


def _short(name: str, value: str, allowed: bool) -> bool:
    """Whether the value is too short to redact safely; refused unless allowed."""
    if not value:
        raise BlindkeyError(f"empty value for {name}: nothing stored")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise BlindkeyError(
            f"the value of {name} is {size} bytes: blindkey redacts values of up to "
            f"{MAX_VALUE_BYTES} bytes (PEM keys and service-account JSON fit). Nothing stored"
        )
    # Shorter values match ordinary text: redacting them would be unreliable and mangle output.
    short = len(value) < MIN_REDACTABLE
    if short and not allowed:
        raise BlindkeyError(
            f"the value of {name} is {len(value)} characters: values shorter than "
            f"{MIN_REDACTABLE} match ordinary text and cannot be redacted safely. Nothing "
            "stored; use the real key, or --allow-short to store it anyway (the audit then "
            "marks every use)"
        )
    return short


def _lower_floor(paths: Paths, new: NewSecret) -> None:
    """The broker keeps each secret's tier floor: lowering it needs an approver's code."""
    name = new.name
    floor = with_code(
        new.code,
        f"Code of approver {new.by or 'default'} (consent to lowering {name}'s protection)",
        lambda code: call(paths, "policy", name=name, tier=new.tier, approvals=new.approvals,
                          by=new.by, code=code, anyway=new.anyway or None),
        required=False,
    )  # fmt: skip
    if new.tier in ("controlled", "restricted") and not floor["approvable"]:
        warn(
            f"no approver is active: nobody can approve {name} yet, and whoever enrols "
            "first can. Enrol yours now: blindkey totp enroll && blindkey totp confirm"
        )


def _set_policy(new: NewSecret, release: list[str], short: bool) -> Callable[[Any], None]:
    def change(document: Any) -> None:
        section = toml_table(document, "secrets", new.name)
        if new.tier:
            section["tier"] = new.tier
        if new.hosts:
            section["hosts"] = string_array(new.hosts)
        if new.agents:
            section["agents"] = string_array(new.agents)
        if release:
            section["release"] = string_array(release)
        if new.approvals:
            section["approvals"] = new.approvals
        if short:
            section["allow_short"] = True
        elif "allow_short" in section:
            del section["allow_short"]
        if new.kind or new.region:
            set_kind(section, new.kind, new.credential, new.region)

    return change


def store_secret(paths: Paths, new: NewSecret, read_value: Callable[[], str]) -> Stored:
    """`secrets set`: the value (read once everything else is known to be valid) into the
    store, its policy into config.toml, both in force when this returns."""
    name = check_name(new.name)
    settings = load_settings(paths.config_file)
    env = pick_env(settings, new.env)
    bound = _bindings("--host", new.hosts, BlindkeyError)
    kind = new.kind or settings.policy(name).kind
    value = checked_value(kind, new.region, read_value())
    short = _short(name, value, new.allow_short)
    release = release_channels(new.release)
    check_kind(new.kind, new.credential, release)
    edits_config = bool(
        new.tier or new.hosts or new.agents or release or new.approvals or short
        or settings.policy(name).allow_short or new.kind or new.region
    )  # fmt: skip
    if new.tier or new.approvals:
        _lower_floor(paths, new)
    if edits_config:
        change = _set_policy(new, release, short)
        settings = change_policy(paths, change, "secret_set", [name], new.by, new.code)
    else:
        record(paths, "secret_set", [name], via="cli")
    with opened(local_store(paths, settings)) as store:
        store.set(env, name, value)
    put_in_force(paths, settings, f"{name} is stored in {env}", [(env, name)], config=edits_config)
    for pattern in bound:
        if not any(entry.overlaps(pattern) for entry in settings.allowlist.entries):
            # Stored all the same: the allowlist may well come next.
            warn(
                f"{pattern} is not on the allowlist: the proxy refuses every call to it "
                f"until `blindkey allowlist add {shlex.quote(str(pattern))}`"
            )
    return Stored(name, env, settings.policy(name))


def _agents(flag: str, names: list[str]) -> list[str]:
    for name in names:
        if name != "*" and not AGENT_NAME.fullmatch(name):
            raise UsageError(f"{flag}: {name!r} is not an agent name (or '*')")
    return names


def _edit_list(current: list[str], add: list[str], remove: list[str], what: str) -> list[str]:
    missing = [r for r in remove if r not in current]
    if missing:
        raise BlindkeyError(f"not among the {what}: {', '.join(missing)}; nothing changed")
    kept = [c for c in current if c not in remove]
    return kept + [a for a in add if a not in kept]


@dataclass(frozen=True)
class PolicyChange:
    """What `secrets policy` was asked to change (no value involved)."""

    name: str
    add_hosts: list[str] = field(default_factory=list)
    remove_hosts: list[str] = field(default_factory=list)
    add_agents: list[str] = field(default_factory=list)
    remove_agents: list[str] = field(default_factory=list)
    tier: str | None = None
    release: str | None = None
    approvals: int | None = None
    by: str | None = None
    code: str | None = None


def change_secret_policy(paths: Paths, asked: PolicyChange) -> SecretPolicy:
    """`secrets policy`: edit one secret's section; in force when this returns."""
    name = check_name(asked.name)
    add_hosts = [str(e) for e in _bindings("--add-host", asked.add_hosts, UsageError)]
    drop_hosts = [str(e) for e in _bindings("--remove-host", asked.remove_hosts, UsageError)]
    add_agents = _agents("--add-agent", asked.add_agents)
    drop_agents = _agents("--remove-agent", asked.remove_agents)
    release = release_channels(asked.release)
    if not (
        add_hosts or drop_hosts or add_agents or drop_agents or release or asked.tier
        or asked.approvals
    ):  # fmt: skip
        raise UsageError(
            "nothing to change: give --add-host, --remove-host, --add-agent, "
            "--remove-agent, --tier, --release or --approvals"
        )

    def change(document: Any) -> None:
        section = toml_table(document, "secrets", name)
        hosts = [str(AllowEntry.binding(str(h))) for h in section.get("hosts", [])]
        if add_hosts or drop_hosts:
            section["hosts"] = string_array(_edit_list(hosts, add_hosts, drop_hosts, "hosts"))
        if add_agents or drop_agents:
            agents = [str(a) for a in section.get("agents", ["*"])]
            section["agents"] = string_array(_edit_list(agents, add_agents, drop_agents, "agents"))
        if release:
            section["release"] = string_array(release)
        if asked.tier:
            section["tier"] = asked.tier
        if asked.approvals:
            section["approvals"] = asked.approvals

    settings = change_policy(paths, change, "secret_policy", [name], asked.by, asked.code)
    put_in_force(paths, settings, f"the policy of {name} is saved", config=True)
    return settings.policy(name)


def import_values(paths: Paths, values: dict[str, str], env: str | None) -> tuple[str, list[str]]:
    """`secrets import`: values parsed from a .env file, stored in one change; the
    environment and the names stored."""
    settings = load_settings(paths.config_file)
    chosen = pick_env(settings, env)
    with opened(local_store(paths, settings)) as store:
        store.set_many(chosen, values)
    names = sorted(values)
    record(paths, "secret_set", names)
    put_in_force(
        paths, settings, f"{len(names)} values are stored in {chosen}", [(chosen, n) for n in names]
    )
    return chosen, names


def delete_secret(
    paths: Paths, name: str, env: str | None, by: str | None, code: str | None
) -> str:
    """`secrets delete`: the value from one environment (a code when its tier is gated), and
    its policy from config.toml once no environment holds it; the environment."""
    check_name(name)
    settings = load_settings(paths.config_file)
    chosen = pick_env(settings, env)
    with opened(local_store(paths, settings)) as store:
        held = inventory(store, settings)
        if name not in held.get(chosen, set()):
            raise BlindkeyError(f"no secret named {name} in {chosen}; see `blindkey secrets list`")
        last = not any(name in found for other, found in held.items() if other != chosen)
        # Deleting a controlled or restricted secret needs an approver's code.
        with_code(
            code,
            f"Code of approver {by or 'default'} (consent to deleting {name})",
            lambda given: call(paths, "forget", name=name, env=chosen, last=last or None,
                               by=by, code=given),
            required=False,
        )  # fmt: skip
        if not store.delete(chosen, name):
            raise BlindkeyError(f"no secret named {name} in {chosen}; see `blindkey secrets list`")
        still_used = any(name in found for found in inventory(store, settings).values())
    if not still_used:

        def change(document: Any) -> None:
            secrets = document.get("secrets")
            if secrets is not None and name in secrets:
                del secrets[name]

        settings = change_policy(paths, change, "secret_delete", [name], by, None)
    else:
        record(paths, "secret_delete", [name])
    done = f"{name} is deleted from {chosen}"
    put_in_force(paths, settings, done, [(chosen, name)], config=not still_used)
    return chosen


def secret_rows(paths: Paths) -> list[dict[str, Any]]:
    """`secrets list`: every name stored or with a policy, where it is held, its policy."""
    settings = load_settings(paths.config_file)
    with opened(local_store(paths, settings)) as store:
        held = inventory(store, settings)
    names = sorted({n for found in held.values() for n in found} | set(settings.secrets))
    rows = []
    for name in names:
        policy = settings.policy(name)
        rows.append(
            {
                "name": name,
                "envs": [env for env in settings.environments if name in held[env]],
                "tier": policy.tier,
                "hosts": [str(h) for h in policy.hosts],
                "agents": list(policy.agents),
                "release": list(policy.release),
            }
        )
    return rows
