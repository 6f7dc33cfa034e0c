"""The bench's table: one row per scenario and system, chatsock and the baseline adjacent."""

from __future__ import annotations

import os
import platform
from typing import Any

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (heading, row key, format)
    ("scenario", "scenario", "s"),
    ("system", "system", "s"),
    ("offered tok/s", "offered_tps", ".0f"),
    ("delivered tok/s", "delivered_tps", ".0f"),
    ("CPU µs/tok", "cpu_us_per_token", ".0f"),
    ("lat p50 ms", "latency_p50_ms", ".1f"),
    ("lat p99 ms", "latency_p99_ms", ".1f"),
    ("TTFT+ p50 ms", "ttft_overhead_p50_ms", ".1f"),
    ("TTFT+ p99 ms", "ttft_overhead_p99_ms", ".1f"),
    ("RSS KB/conn", "rss_kb_per_connection", ".1f"),
    ("RSS KB/stream", "rss_kb_per_stream", ".1f"),
    ("redis cmd/tok", "redis_commands_per_token", ".2f"),
    ("streams ok", "verified", "d"),
    ("failed", "failed", "d"),
)


def host() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    return format(value, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `rows`; a row whose run broke shows its error instead."""
    lines = [
        "| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    errors = []
    for row in rows:
        if row.get("error"):
            cells = [row["scenario"], row["system"], *["-"] * (len(COLUMNS) - 2)]
            errors.append(f"{row['scenario']} {row['system']}: {row['error'].splitlines()[0]}")
        else:
            cells = [_cell(row, key, fmt) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [f"error: {e}" for e in errors])


def progress(row: dict[str, Any]) -> str:
    """One line on stderr as each run ends."""
    if row.get("error"):
        return f"[bench] {row['scenario']} {row['system']}: ERROR {row['error'].splitlines()[0]}"
    if "verified" not in row:
        return (
            f"[bench] {row['scenario']} {row['system']}: {row['rss_kb_per_connection']:.1f} KB/conn"
        )
    failures = ", ".join(f"{n} x {why}" for why, n in row["failures"].items())
    return (
        f"[bench] {row['scenario']} {row['system']}: {row['verified']} ok, {row['failed']} failed, "
        f"{_cell(row, 'cpu_us_per_token', '.0f')} µs/tok, "
        f"p99 {_cell(row, 'latency_p99_ms', '.1f')} ms" + (f" ({failures})" if failures else "")
    )
