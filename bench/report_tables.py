"""The Markdown tables of the load, streaming and single-figure results, and the targets."""

from __future__ import annotations

from bench import proxy_mode, rules, ship
from bench.report import LOAD_TARGETS, TARGETS, Json


def _fmt(value: object, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(entry: Json | None) -> str:
    if not entry:
        return "-"
    return f"{entry['median']:.2f}x ({entry['min']:.2f}-{entry['max']:.2f})"


def render(report: Json) -> str:
    """The Markdown tables: load side by side, streaming, the single figures, the targets."""
    load = report["summary"]["load"]
    lines = [
        "| small JSON, wrk | direct | nginx | aiohttp forwarder | blindkey "
        "| blindkey / forwarder | blindkey / nginx | blindkey / direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for connections, row in load.items():
        ratios = row["blindkey_rps_ratio"]
        lines.append(
            f"| req/s @{connections} | "
            + " | ".join(_fmt(row[t]["rps"]) for t in TARGETS)
            + f" | {_ratio(ratios.get('forwarder'))} | {_ratio(ratios.get('nginx'))}"
            f" | {_ratio(ratios.get('direct'))} |"
        )
        for key in ("p50_us", "p99_us"):
            base = {t: row[t][key] for t in TARGETS}
            bk = base["blindkey"]
            lines.append(
                f"| {key[:3]} latency @{connections} (us) | "
                + " | ".join(_fmt(base[t]) for t in TARGETS)
                + "".join(f" | {bk / base[o]:.2f}x" for o in ("forwarder", "nginx", "direct"))
                + " |"
            )
    row32 = load.get("32")
    if row32:
        cpu = {t: row32[t]["cpu_us_per_request"] for t in TARGETS}
        split = row32["blindkey"]["cpu_us_per_request_by_process"]
        cells = [_fmt(cpu[t], 1) for t in TARGETS]
        if split:
            cells[-1] += " (" + " + ".join(f"{k} {v:.0f}" for k, v in split.items()) + ")"
        lines.append(
            "| CPU per request @32 (us) | "
            + " | ".join(cells)
            + "".join(
                f" | {cpu['blindkey'] / cpu[o]:.2f}x" if cpu.get(o) else " | -"
                for o in ("forwarder", "nginx", "direct")
            )
            + " |"
        )
    row1 = load.get("1")
    if row1:
        added = row1["blindkey_added_us"]
        cells = []
        for t in ("nginx", "forwarder", "blindkey"):
            cells.append(
                _fmt(row1[t]["p50_us"] - row1["direct"]["p50_us"])
                + " / "
                + _fmt(row1[t]["p99_us"] - row1["direct"]["p99_us"])
            )
        lines.append(
            "| added latency @1 over direct, p50 / p99 (us) | 0 | "
            + " | ".join(cells)
            + f" | +{added['forwarder']['p50']['median']:.0f} us p50"
            f" | +{added['nginx']['p50']['median']:.0f} us p50"
            f" | +{added['direct']['p50']['median']:.0f} us p50 |"
        )
    sse = report.get("sse")
    if sse:
        gaps = sse["gap_us"]
        lines.append(
            "| SSE event gap p50 / p99 (us) | "
            + " | ".join(f"{_fmt(gaps[t]['p50_us'])} / {_fmt(gaps[t]['p99_us'])}" for t in TARGETS)
            + " | "
            + " | ".join(
                f"{gaps['blindkey']['p99_us'] / gaps[o]['p99_us']:.2f}x p99"
                for o in ("forwarder", "nginx", "direct")
            )
            + " |"
        )
    big = report.get("big")
    if big:
        size = (
            f"{big['size_mib'] // 1024} GiB"
            if big["size_mib"] >= 1024
            else f"{big['size_mib']} MiB"
        )
        lines.append(
            f"| {size} body (MiB/s) | "
            + " | ".join(_fmt(big[t]["mib_per_s"]) for t in TARGETS)
            + " | "
            + " | ".join(
                f"{big['blindkey']['mib_per_s'] / big[o]['mib_per_s']:.2f}x"
                for o in ("forwarder", "nginx", "direct")
            )
            + " |"
        )
        lines.append(
            f"| {size} body: proxy peak RSS (RSS before) (MB) | - | "
            + " | ".join(
                f"{_fmt(big[t]['peak_rss_mb'], 1)} ({_fmt(big[t]['rss_before_mb'], 1)})"
                for t in TARGETS[1:]
            )
            + " | "
            + " | ".join(
                f"{big['blindkey']['peak_rss_mb'] / big[o]['peak_rss_mb']:.2f}x"
                for o in ("forwarder", "nginx")
            )
            + " | - |"
        )
    stats = [s for row in load.values() for t, s in row.items() if t in LOAD_TARGETS]
    repeated = sum(s["repeated_for_noise"] for s in stats)
    worst = max((s["other_tenants_cpu_pct_max"] for s in stats), default=0.0)
    steal = max((s.get("steal_pct_max", 0.0) for s in stats), default=0.0)
    lines += [
        "",
        f"Medians of {stats[0]['rounds'] if stats else 0} interleaved rounds (SSE and the big "
        "body: 3; peak RSS: the highest); ratios are medians of per-round ratios (range in "
        "brackets). Runs that lost > 10% of the machine's CPU to its other tenants or to "
        f"other virtual machines (steal) were repeated, at most twice ({repeated} repeats); "
        f"the worst kept run still lost {worst:.0f}% to tenants, {steal:.0f}% to steal.",
    ]
    lines += ["", *_floor_lines(report), "", *_single_figures(report), "", *_target_lines(report)]
    if "proxy_mode" in report:
        lines += ["", *proxy_mode.table(report["proxy_mode"])]
    return "\n".join(lines)


def _floor_lines(report: Json) -> list[str]:
    """What the design costs without its features, and what the features cost on top."""
    load = report["summary"]["load"]
    columns = [c for c, row in load.items() if "floor" in row]
    if not columns:
        return []
    lines = [
        "| floor: blindkey's front and upstream client, no feature (bench/floor.py) | "
        + " | ".join(f"@{c}" for c in columns)
        + " |",
        "|---|" + "---:|" * len(columns),
        "| floor req/s | " + " | ".join(_fmt(load[c]["floor"]["rps"]) for c in columns) + " |",
        "| floor CPU per request (us) | "
        + " | ".join(_fmt(load[c]["floor"]["cpu_us_per_request"], 1) for c in columns)
        + " |",
    ]
    for other in ("nginx", "forwarder"):
        lines.append(
            f"| floor / {other} | "
            + " | ".join(_ratio(load[c]["floor_rps_ratio"][other]) for c in columns)
            + " |"
        )
    lines.append(
        "| blindkey / floor | "
        + " | ".join(_ratio(load[c]["blindkey_rps_ratio"]["floor"]) for c in columns)
        + " |"
    )
    return lines


def _single_figures(report: Json) -> list[str]:
    lines = ["| blindkey alone | value |", "|---|---:|"]
    start = report.get("start_to_healthy_s")
    if start:
        lines.append(
            f"| `proxy start` to healthy (median of {len(start['runs'])}) | {start['median']:.2f} s |"
        )
    idle = report.get("idle_rss_mb", {})
    for key, label in (("fresh", "after start"), ("after_load", "after the load runs")):
        if key in idle:
            entry = idle[key]
            lines.append(
                f"| idle RSS {label}: proxy + broker | {entry['proxy']:.1f} + "
                f"{entry['broker']:.1f} = {entry['total']:.1f} MB |"
            )
    resolve = report.get("broker_resolve")
    if resolve:
        rate = next((v for k, v in resolve.items() if k.startswith("pipelined_")), None)
        lines.append(
            f"| broker resolve p50 / p99 (sequential) | {resolve['p50_us']:.0f} / "
            f"{resolve['p99_us']:.0f} us |"
        )
        if rate is not None:
            lines.append(f"| broker resolves/s, 32 pipelined | {rate:,} |")
    for connections, row in report["summary"]["load"].items():
        if "blindkey_nofsync" not in row:
            continue
        on, off = row["blindkey"]["rps"], row["blindkey_nofsync"]["rps"]
        lines.append(
            f"| req/s @{connections}, audit fsync on / off | {on:,.0f} / {off:,.0f} "
            f"({_ratio(row['audit_fsync_on_vs_off'])}) |"
        )
    for connections, row in report["summary"]["load"].items():
        if "route_vs_proxy" not in row:
            continue
        route, proxy = row["blindkey_route"]["rps"], row["blindkey"]["rps"]
        lines.append(
            f"| req/s @{connections}, /r/NAME route / /proxy | {route:,.0f} / {proxy:,.0f} "
            f"({_ratio(row['route_vs_proxy'])}) |"
        )
    lines.extend(_against_lines(report))
    lines.extend(rules.table_lines(report))
    lines.extend(ship.table_lines(report))
    big = report.get("big")
    if big and "redacted_as_expected" in big.get("blindkey", {}):
        verdict = "yes" if big["blindkey"]["redacted_as_expected"] else "**no**"
        lines.append(
            f"| {big['size_mib']} MiB body: each of its {big['size_mib']} embedded values "
            f"replaced by blindkey | {verdict} |"
        )
    many = report.get("idle_connections")
    if many:
        lines.append(
            f"| {many['idle_connections']} idle keep-alive + wrk @{many['connections']}: "
            f"req/s, errors, idle still serving, peak RSS | {many['rps']:,.0f}, "
            f"{many['errors']}, {many['idle_still_serving']}, {many['peak_rss_mb']:.1f} MB |"
        )
    long = report.get("long_values")
    if long:
        lines.append(
            f"| {long['secrets']} secrets of {long['value_bytes']} bytes: proxy RSS before / "
            f"after the first call (which builds the redactor, {long['first_call_ms']:.0f} ms) | "
            f"{long['rss_mb_before_first_call']['proxy']:.1f} / "
            f"{long['rss_mb_after_first_call']['proxy']:.1f} MB |"
        )
    return lines


def _against_lines(report: Json) -> list[str]:
    """This build beside the commit named by --against (medians of per-round figures)."""
    commit = report.get("against", {}).get("commit")
    lines = []
    for connections, row in report["summary"]["load"].items():
        if not commit or "vs_against" not in row:
            continue
        now, then = row["blindkey"], row["blindkey_against"]
        versus = row["vs_against"]
        added = versus["p50_added_us"]
        lines += [
            f"| req/s @{connections}, this build / {commit} | {now['rps']:,.0f} / "
            f"{then['rps']:,.0f} ({_ratio(versus['rps'])}) |",
            f"| p50 @{connections}, this build / {commit} (us) | {now['p50_us']:,.0f} / "
            f"{then['p50_us']:,.0f} ({added['median']:+,.0f} us, {added['min']:+,.0f} to "
            f"{added['max']:+,.0f}) |",
        ]
        if now["cpu_us_per_request"] is not None and then["cpu_us_per_request"] is not None:
            lines.append(
                f"| CPU per request @{connections}, this build / {commit} (us) | "
                f"{now['cpu_us_per_request']:,.0f} / {then['cpu_us_per_request']:,.0f} |"
            )
    return lines


def _target_lines(report: Json) -> list[str]:
    lines = ["| target | measured | goal | met |", "|---|---:|---|---|"]
    for entry in report.get("targets", []):
        measured = "-" if entry["measured"] is None else f"{entry['measured']:g} {entry['unit']}"
        met = {True: "yes", False: "**no**", None: "not measured"}[entry["met"]]
        lines.append(f"| {entry['target']} | {measured} | {entry['goal']} | {met} |")
    return lines
