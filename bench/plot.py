"""The bench's plot: CPU per token and added latency against offered load, per system."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"chatsock": "tab:blue", "chatsock-memory": "tab:green", "baseline": "tab:red"}
MARKERS = ("o", "^")  # per-stream rate up to 50 tok/s, above


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Write a PNG of the load rows (idle rows and broken runs are left out)."""
    import matplotlib

    matplotlib.use("Agg")  # No display: files only.
    import matplotlib.pyplot as plt

    fig, (cpu_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    load = [
        r
        for r in rows
        if r.get("offered_tps") and not r.get("error") and not r["scenario"].startswith("ttft")
    ]
    # One line per system and per-stream rate: 100x20, 300x20, 500x20 are one
    # curve, 100x100 another (it offers as much as 500x20 with fewer streams).
    for system, rate in dict.fromkeys((r["system"], r["rate"]) for r in load):
        series = sorted(
            (r for r in load if (r["system"], r["rate"]) == (system, rate)),
            key=lambda r: r["offered_tps"],
        )
        style = {"color": COLORS.get(system), "marker": MARKERS[rate > 50]}
        label = f"{system}, {rate:g} tok/s per stream"
        x = [r["offered_tps"] for r in series]
        cpu = [r["cpu_us_per_token"] for r in series]
        cpu_ax.plot(x, cpu, "-", label=label, **style)
        for xi, yi, r in zip(x, cpu, series, strict=True):
            if yi is not None:
                cpu_ax.annotate(
                    r["scenario"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        lat_ax.plot(x, [r["latency_p50_ms"] for r in series], "-", label=f"{label} p50", **style)
        lat_ax.plot(x, [r["latency_p99_ms"] for r in series], ":", label=f"{label} p99", **style)
    cpu_ax.set(
        xlabel="offered load (tokens/s)",
        ylabel="worker CPU per delivered token (µs)",
        yscale="log",
    )
    cpu_ax.set_title("CPU per token (two workers)")
    lat_ax.set(xlabel="offered load (tokens/s)", ylabel="added latency (ms)", yscale="log")
    lat_ax.set_title("upstream write → client receive")
    for ax in (cpu_ax, lat_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
