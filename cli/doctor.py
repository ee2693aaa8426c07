"""`blindkey doctor`: one line per check of this installation, ok | warn | fail.

Each check is a function returning its findings; a check that cannot run (a broker that
does not answer, a file that cannot be read) says so as its own finding instead of
stopping the others. Exit 1 when any check fails.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from blindkey.config.arguments import Subcommands, json_flag
from blindkey.config.console import emit_json, say
from blindkey.config.errors import BlindkeyError
from blindkey.config.loader import load_settings
from blindkey.config.model import Settings
from blindkey.config.paths import Paths


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | warn | fail
    detail: str

    def as_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "detail": self.detail}


Check = Callable[[Paths, Settings], Iterator[Finding]]

REMEDIES = (
    "run agents under `blindkey run --isolate -- CMD` (they see none of blindkey's files), or "
    "install the hardened deployment with `sudo blindkey service install --system` (the "
    "broker and the vault under a user of their own)"
)


def check_deployment(paths: Paths, settings: Settings) -> Iterator[Finding]:
    from blindkey.proxy.lifecycle import deployment

    kind = deployment(paths, settings)
    if kind == "single-user":
        yield Finding(
            "deployment",
            "warn",
            "single-user: an agent with a shell as this user can read the vault key, "
            f"approvals.bin and the audit chain key, and edit config.toml; {REMEDIES}",
        )
    else:
        yield Finding("deployment", "ok", "separate broker user: the vault is not this user's")


def _mode_problem(path: Path, wanted: int) -> str | None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: cannot check ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link"
    if info.st_uid != os.getuid():
        return f"{path} belongs to uid {info.st_uid}, not to this user"
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~wanted:
        return f"{path} is {mode:o}; `chmod {wanted:o} {path}`"
    return None


def check_file_modes(paths: Paths, settings: Settings) -> Iterator[Finding]:
    private_files = [
        paths.config_file,
        paths.vault_key,
        paths.vault_file,
        paths.agents_file,
        paths.state_dir / "approvals.bin",
        paths.audit_dir / "chain.key",
    ]
    problems = [
        problem
        for directory in {paths.config_dir, paths.state_dir, paths.audit_dir}
        if (problem := _mode_problem(directory, 0o700)) is not None
    ]
    problems += [p for f in private_files if (p := _mode_problem(f, 0o600)) is not None]
    if problems:
        yield Finding("file modes", "fail", "; ".join(sorted(problems)))
    else:
        yield Finding("file modes", "ok", "directories 0700, secret files 0600, all this user's")


def check_proxy(paths: Paths, settings: Settings) -> Iterator[Finding]:
    from blindkey.proxy.lifecycle import describe, running

    current = running(paths)
    if current is None:
        yield Finding("proxy", "warn", "not running; start it with `blindkey proxy start`")
        return
    shown = describe(current, None, paths)
    where = f"{shown['host']}:{shown['port']}"
    problems = [
        f"{label}: {shown[key]}"
        for key, label in (
            ("config_error", "config"),
            ("broker_error", "broker"),
            ("backend_error", "secret store"),
        )
        if shown.get(key)
    ]
    audit = shown.get("audit") or {}
    if audit.get("state") not in (None, "ok"):
        problems.append(f"audit: {audit.get('error')}")
    if not shown["healthy"]:
        yield Finding("proxy", "fail", f"pid {current.pid} on {where} does not answer /health")
    elif problems:
        yield Finding("proxy", "fail", f"pid {current.pid} on {where}: " + "; ".join(problems))
    else:
        yield Finding("proxy", "ok", f"pid {current.pid} on {where}, healthy")


def check_backend(paths: Paths, settings: Settings) -> Iterator[Finding]:
    from blindkey.broker.secrets_ops import local_store, opened
    from blindkey.proxy.lifecycle import deployment

    try:
        with opened(local_store(paths, settings)) as store:
            count = len(store.names(settings.active_env))
    except (BlindkeyError, OSError) as exc:
        status = "warn" if deployment(paths, settings) != "single-user" else "fail"
        yield Finding("secret store", status, f"{settings.backend}: {exc}")
        return
    yield Finding(
        "secret store",
        "ok",
        f"{settings.backend}: {count} secrets in the {settings.active_env} environment",
    )


CA_MIN_DAYS = 30


def check_ca(paths: Paths, settings: Settings) -> Iterator[Finding]:
    """Proxy mode's CA: both files or neither, the key private, the pair one, and time left
    (programs trust this certificate, so a new CA means handing it out again)."""
    from blindkey.proxy.tls.ca import CaError, load_ca

    key, cert = paths.ca_key, paths.ca_cert
    if not key.exists() and not cert.exists():
        yield Finding(
            "local CA", "ok", "none: proxy mode (CONNECT with placeholders) is not set up"
        )
        return
    renew = f"remove {key} and {cert} and run `blindkey init` for a new CA"
    if (problem := _mode_problem(key, 0o600)) is not None:
        yield Finding("local CA", "fail", f"{problem}: the CA key must be the proxy's only")
        return
    try:
        authority = load_ca(paths)
    except CaError as exc:
        yield Finding("local CA", "fail", f"{exc}; or {renew}")
        return
    yield _ca_time_left(authority.certificate.not_valid_after_utc, cert, renew)


def _ca_time_left(expires: datetime.datetime, cert: Path, renew: str) -> Finding:
    left = expires - datetime.datetime.now(datetime.UTC)
    when = expires.strftime("%Y-%m-%d")
    if left.total_seconds() <= 0:
        return Finding("local CA", "fail", f"{cert} expired on {when}: {renew}")
    if left < datetime.timedelta(days=CA_MIN_DAYS):
        return Finding(
            "local CA",
            "warn",
            f"{cert} expires on {when}, in {left.days} days: {renew} (programs given the "
            "old certificate need the new one)",
        )
    return Finding("local CA", "ok", f"{cert}: key private, pair matches, valid until {when}")


def check_service_program(paths: Paths, settings: Settings) -> Iterator[Finding]:
    program = Path(shutil.which("blindkey") or sys.argv[0]).absolute()
    parts = program.parts
    if len(parts) > 1 and parts[1] in ("home", "root", "tmp"):
        yield Finding(
            "service program",
            "warn",
            f"{program}: a per-user service may run it; `service install --system` refuses a "
            "program under /home, /root or /tmp (its user could change what root runs): "
            "install blindkey system-wide first (e.g. `sudo pip install --prefix /usr/local .`)",
        )
    else:
        yield Finding("service program", "ok", f"{program}")


def check_approvals_store(paths: Paths, settings: Settings) -> Iterator[Finding]:
    from blindkey.broker.approvals.store import approvals_health

    health = approvals_health(paths)
    if health["ok"]:
        yield Finding("approvals store", "ok", f"{health['file']}: readable")
    else:
        yield Finding("approvals store", "fail", str(health["error"]))


def check_approvers(paths: Paths, settings: Settings) -> Iterator[Finding]:
    from blindkey.broker.approvals_link import call

    gated = sorted(n for n, p in settings.secrets.items() if p.tier != "open")
    try:
        rows = call(paths, "approvers")
    except (BlindkeyError, OSError) as exc:
        yield Finding("approvers", "warn", f"cannot list them here: {exc}")
        return
    active = [r["approver"] for r in rows if r.get("status") == "active"]
    pending = [r["approver"] for r in rows if r.get("status") != "active"]
    if pending:
        yield Finding(
            "approvers",
            "warn",
            f"enrolment waiting for `totp confirm`: {', '.join(pending)}; confirm it yourself "
            "now (or let it lapse): an agent must not be the one to finish it",
        )
    if active:
        yield Finding("approvers", "ok", f"active: {', '.join(active)}")
    elif gated:
        yield Finding(
            "approvers",
            "fail",
            f"no active approver, yet {', '.join(gated)} need a grant; enrol one with "
            "`blindkey totp enroll` before an agent does",
        )
    else:
        yield Finding("approvers", "warn", "none: no secret can be gated behind a human yet")


def check_policies(paths: Paths, settings: Settings) -> Iterator[Finding]:
    unbound = sorted(n for n, p in settings.secrets.items() if not p.hosts)
    if unbound:
        yield Finding(
            "secret bindings",
            "warn",
            f"bound to no host (any allowlisted host may get them): {', '.join(unbound)}; "
            "`blindkey secrets set NAME --host HOST`",
        )
    else:
        yield Finding("secret bindings", "ok", "every secret with a policy is bound to hosts")
    loose = sorted(
        n
        for n, p in settings.secrets.items()
        if p.tier == "open" and {"env", "exec"} & set(p.release)
    )
    if loose:
        yield Finding(
            "release channels",
            "warn",
            f"handed out raw (env/exec) with no grant needed: {', '.join(loose)}; give them "
            "tier controlled or restricted",
        )
    else:
        yield Finding("release channels", "ok", "no open secret is released to env or exec")
    if not settings.proxy.require_agent_token:
        yield Finding(
            "agent tokens",
            "warn",
            "require_agent_token = false: any local process acts as agent 'anonymous'",
        )
    else:
        yield Finding("agent tokens", "ok", "every caller needs its agent token")


CHECKS: tuple[Check, ...] = (
    check_deployment,
    check_file_modes,
    check_proxy,
    check_backend,
    check_ca,
    check_service_program,
    check_approvals_store,
    check_approvers,
    check_policies,
)


def diagnose(paths: Paths) -> list[Finding]:
    try:
        settings = load_settings(paths.config_file)
    except BlindkeyError as exc:
        return [Finding("config", "fail", str(exc))]
    findings = [Finding("config", "ok", f"{paths.config_file}")]
    for check in CHECKS:
        try:
            findings.extend(check(paths, settings))
        except (BlindkeyError, OSError) as exc:
            findings.append(Finding(check.__name__.removeprefix("check_"), "fail", str(exc)))
    return findings


def cmd_doctor(paths: Paths, args: argparse.Namespace) -> int:
    from blindkey.audit.printable import printable

    findings = diagnose(paths)
    if args.json:
        emit_json([f.as_json() for f in findings])
    else:
        for finding in findings:
            say(f"{finding.status:4}  {finding.check}: {printable(finding.detail)}")
    return 1 if any(f.status == "fail" for f in findings) else 0


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser(
        "doctor",
        help="check this installation: deployment, file modes, proxy, store, approvers, policy",
        description="One line per check: ok, warn or fail (exit 1 on any fail).",
    )
    json_flag(p)
    p.set_defaults(handler=cmd_doctor)
