"""The report: medians over the rounds, storefs' ratio to the best peer and to the raw folder, a chart.

Every figure of every round goes to the JSON file beside the medians; the table printed and the
chart (same name, .png) show the medians.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
from typing import Any

from .common import say
from .systems import PEERS, REFERENCES

log = logging.getLogger(__name__)

# key, label, unit, higher is better
METRICS: list[tuple[str, str, str, bool]] = [
    ("write_mbps", "seq write (close incl.)", "MB/s", True),
    ("write_bucket_s", "seq write until in bucket", "s", False),
    ("cold_read_mbps", "cold seq read", "MB/s", True),
    ("warm_read_mbps", "warm seq read", "MB/s", True),
    ("rand_read_iops", "4 KiB random read", "IOPS", True),
    ("create_fps", "create 64 KiB files", "files/s", True),
    ("create_bucket_s", "create until all in bucket", "s", False),
    ("create_cpu_us", "create: daemon CPU per file", "µs", False),
    ("walk_ms", "walk + stat", "ms", False),
    ("read_files_fps", "read files back", "files/s", True),
    ("rm_ms", "rm -r", "ms", False),
    ("rm_cpu_us", "rm -r: daemon CPU per file", "µs", False),
    ("tar_s", "tar -x stdlib", "s", False),
    ("tar_bucket_s", "tar -x until in bucket", "s", False),
    ("frozen_getattr_p99_ms", "server frozen: stat p99", "ms", False),
    ("frozen_readdir_p99_ms", "server frozen: readdir p99", "ms", False),
    ("frozen_read_p99_ms", "server frozen: read p99", "ms", False),
    ("frozen_create_p99_ms", "server frozen: create p99", "ms", False),
    ("frozen_max_ms", "server frozen: slowest operation", "ms", False),
    ("outage_dead_read_s", "server killed: uncached read fails", "s", False),
    ("outage_frozen_read_s", "server frozen: uncached read fails", "s", False),
    ("outage_dead_queue_s", "server restarted: outage's files in bucket", "s", False),
    ("outage_frozen_queue_s", "server thawed: outage's files in bucket", "s", False),
    ("rss_mib", "daemon peak RSS", "MiB", False),
]
METRIC = {m[0]: m for m in METRICS}
COLORS = {"storefs": "#d62728", "rclone": "#1f77b4", "juicefs": "#2ca02c", "s3fs": "#9467bd", "raw": "#7f7f7f",
          "floor": "#bcbd22", "overlay": "#17becf", "direct": "#8c564b"}
MEMINFO = "/proc/meminfo"
CPUINFO = "/proc/cpuinfo"


def fmt(v: float | None) -> str:
    """A figure with as many digits as it deserves ("-" for none)."""
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def medians(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{metric: {system: median over the rounds}}."""
    by: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        by.setdefault(r["metric"], {}).setdefault(r["system"], []).append(r["value"])
    return {m: {s: statistics.median(v) for s, v in d.items()} for m, d in by.items()}


def better(metric: str, a: float, b: float) -> float:
    """How many times better a is than b (>1: a is better)."""
    hb = METRIC[metric][3]
    if a <= 0 or b <= 0:
        return float("nan")
    return a / b if hb else b / a


def ratios(med: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric: the best peer, storefs against it, the raw folder and the floor, and the references' ratios."""
    out: dict[str, dict[str, Any]] = {}
    for metric, vals in med.items():
        peers = {s: v for s, v in vals.items() if s in PEERS}
        best = None
        if peers:
            best = (max if METRIC[metric][3] else min)(peers, key=peers.get)
        sv = vals.get("storefs")
        out[metric] = {"best_peer": best,
                       "vs_best_peer": better(metric, sv, peers[best]) if sv and best else None,
                       "vs_raw": better(metric, sv, vals["raw"]) if sv and vals.get("raw") else None,
                       "vs_floor": better(metric, sv, vals["floor"]) if sv and vals.get("floor") else None,
                       "vs_direct": better(metric, sv, vals["direct"]) if sv and vals.get("direct") else None}
        for ref in REFERENCES:
            out[metric][f"{ref}_vs_best_peer"] = (better(metric, vals[ref], peers[best])
                                                  if vals.get(ref) and best else None)
    return out


def table(med: dict[str, dict[str, float]], rat: dict[str, dict[str, Any]], systems: list[str]) -> str:
    """The side-by-side table (markdown): one row per metric, one column per system, then the ratios."""
    extra = (["vs_floor"] if "floor" in systems else []) + (["vs_direct"] if "direct" in systems else [])
    extra += [f"{r}_vs_best_peer" for r in REFERENCES if r in systems]
    head = ["workload", "unit", *systems, "storefs vs best peer", "storefs vs raw"]
    head += [k.replace("vs_floor", "storefs vs floor").replace("vs_direct", "storefs vs direct")
             .replace("_vs_best_peer", " vs best peer") for k in extra]
    lines = []
    for key, label, unit, hb in METRICS:
        if key not in med:
            continue
        r = rat[key]
        vbp = f"{r['vs_best_peer']:.2f}x ({r['best_peer']})" if r["vs_best_peer"] else "-"
        vraw = f"{r['vs_raw']:.2f}x" if r["vs_raw"] else "-"
        row = [label, unit + (" ↑" if hb else " ↓"), *[fmt(med[key].get(s)) for s in systems], vbp, vraw]
        row += [f"{r[k]:.2f}x" if r.get(k) else "-" for k in extra]
        lines.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=False)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + " |" for row in lines]
    return "\n".join(out)


def chart(path: str, med: dict[str, dict[str, float]], systems: list[str], title: str) -> str | None:
    """Grouped bars: each system's figure relative to the best peer (1 = best peer, higher = better)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib missing: no chart")
        return None
    keys = [m[0] for m in METRICS if m[0] in med]
    rat = ratios(med)
    fig, ax = plt.subplots(figsize=(max(10, 1.1 * len(keys) + 2), 5.5))
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        xs, ys = [], []
        for j, k in enumerate(keys):
            best = rat[k]["best_peer"]
            v = med[k].get(s)
            if v and best:
                xs.append(j + (i - (len(systems) - 1) / 2) * width)
                ys.append(better(k, v, med[k][best]))
        ax.bar(xs, ys, width, label=s, color=COLORS.get(s))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{METRIC[k][1]}\n({METRIC[k][2]}{' ↑' if METRIC[k][3] else ' ↓'})" for k in keys],
                       rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("speed relative to the best peer (log; >1 = better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine() -> dict[str, Any]:
    """CPUs, memory, kernel and Python of this machine, for the JSON."""
    with open(MEMINFO) as f:
        mem = int(f.readline().split()[1]) * 1024
    with open(CPUINFO) as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem / 1024 ** 3, 1),
            "kernel": platform.release(), "python": platform.python_version()}


