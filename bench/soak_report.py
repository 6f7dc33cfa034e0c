"""The soak's results: a few lines for the terminal, and the JSON written next to the plot."""

from __future__ import annotations

import json
from typing import Any


def report(result: dict[str, Any]) -> str:
    """The run in a few lines."""
    c, cl = result["counts"], result["clients"]
    churn_rate = cl.get("churnLaunched", 0) / max(cl.get("churnSeconds", 0), 1)
    lines = [
        f"streams verified: {result['verified']} of {result['streams']}; "
        f"resumes {c.get('resumes', 0)} (in {c.get('streams_resumed', 0)} streams), "
        f"stops {c.get('stops', 0)} ({c.get('stops_elsewhere', 0)} from the other worker, "
        f"{c.get('stops_that_stopped', 0)} stopped), second tabs {c.get('second_tabs', 0)} "
        f"({c.get('second_tabs_live', 0)} live), deletes {c.get('deletes', 0)}, "
        f"tokens delivered {c.get('tokens_delivered', 0)}",
        f"sockets connected: {cl.get('connects', 0)} in all; churn: {cl.get('churnLaunched', 0)} "
        f"new sockets ({churn_rate:.0f}/s; {cl.get('churnSkipped', 0)} skipped while a "
        f"second's worth were still connecting), {cl.get('churnOk', 0)} admitted with a "
        f"valid token, {cl.get('churnRefused', 0)} without one refused",
    ]
    for name, b in result["baseline"]["workers"].items():
        e, p = result["end"]["workers"][name], result["peak"]["workers"][name]
        lines.append(
            f"{name}: tasks {b['tasks']:.0f} -> {e['tasks']:.0f} (peak {p['tasks']:.0f}); "
            f"RSS {b['rss_kb'] / 1024:.1f} -> {e['rss_kb'] / 1024:.1f} MB "
            f"(peak {p['rss_kb'] / 1024:.1f}); fds {b['fds']} -> {e['fds']} (peak {p['fds']}; "
            f"Redis sockets {b['redis_fds']} -> {e['redis_fds']}); "
            f"clients peak {p['clients']:.0f}; CPU under load "
            f"{result['cpu_percent_under_load'].get(name, 0):.0f}% of a core"
        )
    lines.append(
        f"Redis keys: {result['baseline']['keys']} -> {result['end']['keys']} "
        f"(peak {result['peak']['keys']})"
    )
    for shape, what in result["leftover_keys"].items():
        lines.append(f"  left in Redis: {shape}: {what}")
    if result["load_errors"]:
        lines.append("load errors (no promise broken; the box was saturated):")
        lines += [f"  - {e}" for e in result["load_errors"]]
    violations = result["violations"]
    lines.append(f"violations: {len(violations)}")
    lines += [f"  - {v}" for v in violations[:100]]
    return "\n".join(lines)


def to_json(result: dict[str, Any]) -> str:
    """The result as JSON: the figures indented, then one line per sample."""
    head = json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1)
    samples = ",\n".join(json.dumps(s) for s in result["samples"])
    return f'{head[:-2]},\n "samples": [\n{samples}\n ]\n}}\n'
