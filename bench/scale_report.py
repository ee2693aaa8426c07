"""The scale rows as checks and a table: each figure beside its target, and pass or miss."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
RSS_LIMIT_MB = 150


def _check(row: str, measured: float | None, unit: str, goal: str, met: bool | None) -> Json:
    return {
        "target": row,
        "measured": None if measured is None else round(measured, 3),
        "unit": unit,
        "goal": goal,
        "met": met,
    }


def _below(row: str, measured: float | None, unit: str, limit: float, ok: bool = True) -> Json:
    met = None if measured is None else measured < limit and ok
    return _check(row, measured, unit, f"< {limit:g} {unit}", met)


def targets(scale: Json) -> list[Json]:
    return [*_allowlist(scale), *_secrets(scale), *_audit(scale)]


def _allowlist(scale: Json) -> list[Json]:
    rows = scale.get("allowlist", {})
    if "rps" not in rows:
        return [_check("allowlist rows", None, "", "ran", False)] if rows else []
    at = f"req/s @{rows['connections']}"
    out = [
        _check(f"{at}, {name.split('_')[1]} allowlist entries", rps, "req/s", "(figure)", None)
        for name, rps in rows["rps"].items()
    ]
    ratio = rows.get("ratio_largest_to_smallest")
    sizes = [name.split("_")[1] for name in rows["rps"]]
    out.append(
        _check(
            f"req/s, {sizes[-1]} entries / {sizes[0]} entries",
            ratio,
            "x",
            ">= 0.8x",
            None if ratio is None else ratio >= 0.8 and rows["errors"] == 0,
        )
    )
    return out


def _secrets(scale: Json) -> list[Json]:
    rows = scale.get("secrets", {})
    if "secrets" not in rows:
        return [_check("secrets rows", None, "", "ran", False)] if rows else []
    count = f"{rows['secrets']:,} secrets"
    out = []
    for key, label in (
        ("first_call_after_start", "first call after `proxy start`"),
        ("first_call_after_change", "first call after a change"),
        ("first_call_after_restart", "first call after a restart (matcher cached)"),
    ):
        if key not in rows:
            continue
        call = rows[key]
        status = call["status"]
        if status != 200:
            label += f" ({'no answer' if status == 0 else f'answered {status}'})"
        out.append(_below(f"{count}: {label}", call["seconds"], "s", 0.5, status == 200))
    out.append(_below(f"{count}: proxy peak RSS", rows["proxy_peak_rss_mb"], "MB", RSS_LIMIT_MB))
    return out


def _audit(scale: Json) -> list[Json]:
    rows = scale.get("audit", {})
    if "tools" not in rows:
        return [_check("audit rows", None, "", "ran", False)] if rows else []
    count = f"{rows['filled']['records']:,} records"
    tools = rows["tools"]
    verify = tools["verify"]
    out = [
        _below(
            f"`audit verify` over {count}: peak RSS",
            verify["peak_rss_mb"],
            "MB",
            RSS_LIMIT_MB,
            verify["exit"] == 0 and rows["verify_ok"],
        )
    ]
    logs = tools["logs_last_10"]
    out.append(
        _below(
            f"`proxy logs --last 10` over {count}: peak RSS",
            logs["peak_rss_mb"],
            "MB",
            RSS_LIMIT_MB,
            logs["exit"] == 0,
        )
    )
    out.append(_below(f"`proxy logs --last 10` over {count}: wall", logs["wall_s"], "s", 1.0))
    report = tools["report"]
    out.append(
        _below(
            f"`audit report --html` over {count}: peak RSS",
            report["peak_rss_mb"],
            "MB",
            RSS_LIMIT_MB,
            report["exit"] == 0,
        )
    )
    full = rows["start_full_current"]
    size = rows["filled"]["current_file_mb"]
    out.append(
        _below(f"`proxy start` over a {size:g} MB current audit file", full["start_s"], "s", 1.0)
    )
    return out


def _mark(met: bool | None) -> str:
    return {True: "pass", False: "**miss**", None: ""}[met]


def _measured(entry: Json) -> str:
    value = entry["measured"]
    if value is None:
        return "-"
    return (
        f"{value:,.0f} {entry['unit']}"
        if entry["unit"] == "req/s"
        else f"{value:g} {entry['unit']}"
    )


def render(scale: Json) -> str:
    """The scale table, then what each row measured beside it (no target of its own)."""
    lines = ["| scale | measured | target | |", "|---|---:|---|---|"]
    for entry in scale.get("targets", []):
        goal = "" if entry["goal"] == "(figure)" else entry["goal"]
        lines.append(f"| {entry['target']} | {_measured(entry)} | {goal} | {_mark(entry['met'])} |")
    lines += ["", *_notes(scale)]
    return "\n".join(lines)


def _notes(scale: Json) -> list[str]:
    notes = []
    for key in ("allowlist", "secrets", "audit"):
        failed = scale.get(key, {}).get("failed")
        if failed:
            notes.append(f"- {key} rows could not run: {failed}")
    allowlist = scale.get("allowlist", {})
    if "runs" in allowlist:
        kept = [run for runs in allowlist["runs"].values() for run in runs]
        worst = max((r.get("other_tenants_cpu_pct", 0.0) for r in kept), default=0.0)
        notes.append(
            f"- allowlist: medians of {len(kept) // max(1, len(allowlist['runs']))} interleaved "
            f"rounds (ratio range {allowlist['ratio_range']}); the worst kept run lost "
            f"{worst:g}% of the CPUs to other tenants"
        )
        cpu = allowlist.get("cpu_us_per_request", {})
        if cpu:
            each = ", ".join(f"{n.split('_')[1]} entries {v:g} us" for n, v in cpu.items())
            notes.append(f"- allowlist: proxy + broker CPU per call @32 (median): {each}")
    secrets = scale.get("secrets", {})
    if "import_s" in secrets:
        notes.append(
            f"- {secrets['secrets']:,} secrets: `secrets import` took {secrets['import_s']:g} s; "
            f"`proxy start` {secrets['start_s']:g} s (a restart: {secrets.get('restart_s', '-')}"
            " s); the next call after the change "
            f"{secrets['next_call']['seconds']:g} s; broker RSS {secrets['broker_rss_mb']:g} MB"
        )
    audit = scale.get("audit", {})
    if "tools" in audit:
        filled, fresh, full = audit["filled"], audit["start_fresh"], audit["start_full_current"]
        walls = ", ".join(f"{t['command']} {_wall_cpu(t)}" for t in audit["tools"].values())
        fresh_logs = audit.get("logs_last_10_fresh")
        if fresh_logs:
            walls += f"; `proxy logs --last 10` on the fresh audit {_wall_cpu(fresh_logs)}"
        notes += [
            f"- audit: {filled['records']:,} records written in {filled['seconds']:g} s over "
            f"{filled['files']} files; `audit verify` ok: {audit['verify_ok']} "
            f"({audit['verify_records']} records); wall: {walls}",
            f"- `proxy start`: {fresh['start_s']:g} s{_proxy_cpu(fresh)} and a "
            f"{fresh['proxy_peak_rss_mb']:g} MB proxy peak on a fresh audit; "
            f"{full['start_s']:g} s{_proxy_cpu(full)} and {full['proxy_peak_rss_mb']:g} MB "
            "over the full current file",
        ]
    return notes


def _wall_cpu(entry: Json) -> str:
    """Wall seconds, and the command's own CPU seconds when measured (runs before them
    have none): the wall time of a command on a shared machine counts the others' load."""
    cpu = entry.get("cpu_s")
    return f"{entry['wall_s']:g} s" + (f" ({cpu:g} s CPU)" if cpu else "")


def _proxy_cpu(entry: Json) -> str:
    cpu = entry.get("proxy_cpu_s")
    return f" ({cpu:g} s of proxy CPU)" if cpu else ""
