"""The results: a markdown table, the raw numbers as JSON, and a PNG chart.

python -m benchmarks.report benchmarks/results/latest.json   # redraws the .md and .png
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.context import TARGETS, Results, Row

ABOUT = (
    "Targets: **direct** = kube-apiserver v1.36.3 + etcd (HTTPS, bearer token, started with"
    " `--enable-priority-and-fairness=false`); **no-cache** = `watchcache serve --no-cache`"
    " (forwards every request); **cached** = `watchcache serve`. Load: wrk (1 thread,"
    " keep-alive) for reads, a small Go program for watches (one epoll thread per process),"
    " http.client for writes. Server CPU counts"
    " kube-apiserver + etcd, plus the watchcache process for its targets. Ratios are"
    " cached ÷ the other target: above 1 is better for req/s and delivery, below 1 is"
    " better for latency, CPU and memory."
)
COLORS = {"direct": "#4c72b0", "no-cache": "#dd8452", "cached": "#55a868", "ceiling": "#8172b2"}


def num(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    a = abs(x)
    text = (
        f"{x:,.0f}"
        if a >= 100
        else f"{x:.1f}"
        if a >= 10
        else f"{x:.2f}"
        if a >= 0.1
        else f"{x:.3f}"
        if a >= 0.001
        else f"{x:.1e}"
    )
    return f"{text} {unit}".strip()


def ratio(x: float) -> str:
    return "—" if math.isnan(x) else f"{num(x)}x"


def _noise(meta: dict[str, Any]) -> str:
    other = meta.get("other_cores")
    if not other:
        return ""
    return (
        f" Processes outside the benchmark (the machine is shared) kept {other['mean']:.2f} cores"
        f" busy on average during the load runs (at most {other['max']:.2f}); load average at"
        f" the start: {' '.join(meta.get('loadavg_at_start', []))}."
    )


def _verdict(met: bool | None) -> str:
    return "met" if met else "n/a" if met is None else "**missed**"


def markdown(meta: dict[str, Any], results: Results) -> str:
    m, p = meta["machine"], meta.get("population", {})
    sizes = meta["sizes"]
    out = [
        "# watchcache benchmarks",
        "",
        f"{meta['date']}, `python -m benchmarks.run{' --quick' if meta['mode'] == 'quick' else ''}`"
        f" ({meta['mode']} mode, {meta.get('total_s', '?')} s). Machine: {m.get('nproc')} cores"
        f" ({m.get('cpu', '?')}), {m.get('memory', '?')}, Python {m.get('python')}; the servers"
        " and the load generators share these cores." + _noise(meta),
        "",
        f"Population: {p.get('objects', 0):,} RayClusters ({sizes['per_namespace']:,} in each of"
        f" {sizes['namespaces']} namespaces) from the ray-operator samples with status,"
        f" {p.get('json_bytes_per_object', 0):,} B of JSON each on average, created in"
        f" {p.get('seconds', 0)} s ({p.get('objects_per_s', 0)} objects/s, create + status"
        " write, 16 keep-alive connections).",
        "",
        ABOUT,
        "",
        "## Targets (issue 7)",
        "",
        "| # | goal | measured (cached) | verdict |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {g['scenario']} | {g['goal']} | {g['measured']} | {_verdict(g['met'])} |"
        for g in results.goals
    ]
    out += [
        "",
        "## Figures",
        "",
        "| # | case | metric | direct | no-cache | cached | cached/direct | cached/no-cache |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results.rows:
        cells = [num(r.values.get(t), r.unit) for t in TARGETS]
        case = r.case + (" †" if r.noisy else "")
        out.append(
            f"| {r.scenario} | {case} | {r.metric} | {' | '.join(cells)} |"
            f" {ratio(r.ratio('direct'))} | {ratio(r.ratio('no-cache'))} |"
        )
    if any(r.noisy for r in results.rows):
        out += [
            "",
            "† measured while processes outside the benchmark kept more than half a core busy"
            " for at least one of the three targets: compare these with care.",
        ]
    ceiling = results.raw.get("ceiling")
    if ceiling:
        out += [
            "",
            "## Ceiling (scenario 8): the same list bytes from a fixed buffer",
            "",
            "| case | ceiling req/s | ceiling p99 | cached req/s | cached/ceiling |",
            "|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {case} | {num(c['ceiling_rps'])} | {num(c['ceiling_p99_ms'], 'ms')} |"
            f" {num(c['cached_rps'])} | {num(c['cached_share'])} |"
            for case, c in ceiling.items()
        ]
    small = results.raw.get("small_ceiling")
    if small:
        out += [
            "",
            "## Small-answer ceiling (scenario 12): a bare Tornado server, same bytes",
            "",
            "| case | Tornado req/s per core | Tornado p99 (sharing a core) |"
            " cached req/s per core | cached/Tornado |",
            "|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {case} | {num(c['ceiling_rps'])} | {num(c['ceiling_p99_ms'], 'ms')} |"
            f" {num(c['cached_rps'])} | {num(c['cached_share'])} |"
            for case, c in small.items()
        ]
    if results.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in results.notes]
    return "\n".join(out) + "\n"


def _bars(ax: Any, rows: list[Row], title: str, xlabel: str, ceiling: dict[str, float]) -> None:
    labels = [f"{r.scenario}: {r.case}" for r in rows]
    h = 0.8 / (3 + bool(ceiling))
    for i, target in enumerate(TARGETS):
        ys = [j + i * h for j in range(len(rows))]
        ax.barh(
            ys,
            [r.values.get(target, math.nan) for r in rows],
            h,
            label=target,
            color=COLORS[target],
        )
    if ceiling:
        ys = [j + 3 * h for j in range(len(rows))]
        vals = [ceiling.get(r.case, math.nan) for r in rows]
        ax.barh(ys, vals, h, label="ceiling", color=COLORS["ceiling"])
    ax.set_yticks([j + h for j in range(len(rows))], labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.legend(fontsize=7, loc="best")


def chart(path: Path, meta: dict[str, Any], results: Results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reads = [r for r in results.rows if r.scenario in "1234"]
    rps = [r for r in reads if r.metric == "req/s"]
    p99 = [r for r in reads if r.metric == "p99"]
    cpu = [r for r in reads if r.metric == "server CPU / 1k req"]
    other = [
        r
        for r in results.rows
        if (r.scenario == "5" and r.metric == "delivery p99")
        or (r.scenario == "6" and r.metric == "p50")
    ]
    ceiling = {case: c["ceiling_rps"] for case, c in results.raw.get("ceiling", {}).items()}
    n = max(len(rps), len(other), 1)
    fig, axes = plt.subplots(2, 2, figsize=(18, 3 + 0.9 * n))
    panels = [
        (axes[0][0], rps, "Reads: throughput (higher is better)", "requests/s (log)", ceiling),
        (axes[0][1], p99, "Reads: p99 latency (lower is better)", "ms (log)", {}),
        (axes[1][0], cpu, "Reads: server CPU per 1,000 requests", "CPU seconds (log)", {}),
        (axes[1][1], other, "Watch delivery p99 and write p50", "ms (log)", {}),
    ]
    for ax, rows, title, xlabel, ceil in panels:
        if rows:
            _bars(ax, rows, title, xlabel, ceil)
        else:
            ax.set_axis_off()
    fig.suptitle(
        f"watchcache vs kube-apiserver — {meta['date']}, {meta['machine'].get('nproc')} cores,"
        f" {meta.get('population', {}).get('objects', 0):,} RayClusters ({meta['mode']})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def write(folder: Path, meta: dict[str, Any], results: Results) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": folder / "latest.md",
        "json": folder / "latest.json",
        "png": folder / "latest.png",
    }
    paths["md"].write_text(markdown(meta, results))
    data = {
        "meta": meta,
        "goals": results.goals,
        "rows": [r.__dict__ for r in results.rows],
        "raw": results.raw,
        "notes": results.notes,
    }
    paths["json"].write_text(json.dumps(data, indent=1, default=str) + "\n")
    try:
        chart(paths["png"], meta, results)
    except ImportError:
        paths.pop("png")
        print("matplotlib is not installed (pip install '.[bench]'): no chart", flush=True)
    return paths


def load(path: Path) -> tuple[dict[str, Any], Results]:
    """The meta and results of a JSON file written by ``write``."""
    data = json.loads(path.read_text())
    results = Results(
        rows=[Row(**r) for r in data["rows"]],
        raw=data["raw"],
        goals=data["goals"],
        notes=data["notes"],
    )
    return data["meta"], results


if __name__ == "__main__":
    import sys

    source = Path(sys.argv[1])
    meta, results = load(source)
    print(", ".join(str(p) for p in write(source.parent, meta, results).values()))
