"""The use cases of `blindkey secrets diff|push|pull`: two environments, or the local store
and the team store under [remote], compared by a keyed hash made for this run (no value is
ever shown), and the values that are new or changed copied one way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blindkey.broker.backends import open_openbao
from blindkey.broker.compare import Difference, compare, comparison_key, keyed_digests
from blindkey.broker.notify import put_in_force
from blindkey.broker.secrets_ops import local_store, opened, pick_env
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths
from blindkey.config.stores import PRODUCTION, OpenBaoSettings


def _remote(settings: Settings) -> OpenBaoSettings:
    if settings.remote is None:
        raise BlindkeyError(
            'no team store: add [remote] with address = "https://..." to config.toml '
            "(the same keys as an openbao [backend])"
        )
    return settings.remote


def chosen_envs(settings: Settings, env: str | None, every: bool) -> list[str]:
    if every:
        return list(settings.environments)
    return [pick_env(settings, env)]


def compare_envs(paths: Paths, source: str, target: str) -> tuple[str, str, Difference]:
    """Two local environments (by name, checked): their names and the difference."""
    settings = load_settings(paths.config_file)
    key = comparison_key()
    source, target = pick_env(settings, source), pick_env(settings, target)
    with opened(local_store(paths, settings)) as store:
        diff = compare(
            keyed_digests(store.values(source), key), keyed_digests(store.values(target), key)
        )
    return source, target, diff


def compare_remote(
    paths: Paths, env: str | None, every: bool
) -> tuple[str, list[tuple[str, Difference]]]:
    """The local store against [remote], per environment; and how the remote is named."""
    settings = load_settings(paths.config_file)
    key = comparison_key()
    envs = chosen_envs(settings, env, every)
    remote = open_openbao(_remote(settings))
    diffs = []
    with opened(local_store(paths, settings)) as store, opened(remote):
        for name in envs:
            local, team = store.values(name), remote.values(name)
            diffs.append((name, compare(keyed_digests(local, key), keyed_digests(team, key))))
    return remote.describe(), diffs


def transfer(
    paths: Paths,
    env: str | None,
    every: bool,
    *,
    push: bool,
    dry_run: bool,
    confirm: Callable[[str], None],
) -> tuple[str, list[dict[str, Any]]]:
    """Copy the values new or changed on one side to the other (push: local to [remote]);
    `confirm` is asked before anything is written into production. Where they went, and a
    report per environment."""
    settings = load_settings(paths.config_file)
    remote = open_openbao(_remote(settings))
    key = comparison_key()
    reports: list[dict[str, Any]] = []
    pulled: list[tuple[str, str]] = []
    with opened(local_store(paths, settings)) as local, opened(remote):
        source, target = (local, remote) if push else (remote, local)
        where = remote.describe() if push else "the local store"
        for name in chosen_envs(settings, env, every):
            values = source.values(name)
            diff = compare(keyed_digests(values, key), keyed_digests(target.values(name), key))
            writes = [*diff.only_source, *diff.differ]
            if writes and not dry_run and name == PRODUCTION:
                confirm(f"write {len(writes)} values into {PRODUCTION} in {where}")
            if not dry_run:
                for secret in writes:
                    target.set(name, secret, values[secret])
                if not push:
                    pulled += [(name, secret) for secret in writes]
            reports.append(
                {
                    "env": name,
                    "created": list(diff.only_source),
                    "updated": list(diff.differ),
                    "unchanged": len(diff.same),
                    "only_in_target": list(diff.only_target),
                    "dry_run": dry_run,
                }
            )
    if pulled:
        put_in_force(paths, settings, f"{len(pulled)} pulled values are stored", pulled)
    return where, reports
