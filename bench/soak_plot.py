"""The soak's plot: each worker's RSS, asyncio tasks and fds, and Redis's keys, over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(samples: list[dict[str, Any]], marks: dict[str, float], path: Path) -> None:
    """Write a PNG of the samples; `marks` are named times (s) drawn as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")  # No display: files only.
    import matplotlib.pyplot as plt

    good = [s for s in samples if "workers" in s]
    t = [s["t"] for s in good]
    names = list(good[0]["workers"]) if good else []
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    panels = [(axes[0][0], "RSS (MB)", "rss_kb", 1024), (axes[0][1], "asyncio tasks", "tasks", 1),
              (axes[1][0], "open fds", "fds", 1)]  # fmt: skip
    for ax, label, key, scale in panels:
        for name in names:
            # A reading that failed (a scrape timing out on a starved worker) is a gap.
            values = [_scaled(s["workers"][name].get(key), scale) for s in good]
            ax.plot(t, values, label=name, lw=1)
        ax.set_ylabel(label)
    clients = axes[0][1].twinx()
    for name in names:
        clients.plot(t, [_scaled(s["workers"][name].get("clients"), 1) for s in good], ":", lw=0.8,
                     label=f"{name} Socket.IO clients")  # fmt: skip
    clients.set_ylabel("Socket.IO clients (dotted)")
    keys = axes[1][1]
    keys.plot(t, [s["keys"] for s in good], color="tab:red", lw=1, label="keys (DBSIZE)")
    keys.set_ylabel("Redis keys")
    redis_mem = keys.twinx()
    redis_mem.plot(t, [s["redis_used_kb"] / 1024 for s in good], ":", color="tab:gray", lw=0.8)
    redis_mem.set_ylabel("Redis used_memory (MB, dotted)")
    for ax in (axes[0][0], axes[0][1], axes[1][0], keys):
        for label, at in marks.items():
            ax.axvline(at, color="black", lw=0.6, ls="--")
            ax.annotate(label, (at, 1), xycoords=("data", "axes fraction"), fontsize=7,
                        rotation=90, va="top", ha="right")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("seconds")
    fig.suptitle("chatsock soak: two workers, one Redis")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _scaled(value: float | None, scale: float) -> float:
    return float("nan") if value is None else value / scale
