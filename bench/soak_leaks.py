"""Back to baseline? The soak's leak verdict on its samples.

The baseline is taken once the workers are warm (one stream each), as the
lowest of a few readings, before any load; the end is a reading after the
load, once the TTLs have run out. What "back" means:

- asyncio tasks: at most the baseline plus `tasks_slack` (0 by default);
- fds that are not Redis sockets (client sockets, upstream sockets, files):
  at most the baseline plus `fd_slack` (0 by default; idle upstream
  keep-alive sockets close after aiohttp's 15 s keep-alive);
- Redis sockets: at most the baseline plus `store.max_connections` plus two
  (the pool keeps what it opened under load, by design; pub/sub listeners);
- RSS: at most the baseline plus `rss_slack_mb` (the allocator keeps some of
  what the peak used; a leak grows with the run);
- Redis keys: back to the count before the warm-up (every key has a TTL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REDIS_POOL_EXTRA = 8


@dataclass(frozen=True)
class Slack:
    """How far above its baseline each reading may end."""

    tasks: int = 0
    fds: int = 0
    rss_mb: float = 40.0
    redis_pool: int = 64


def non_redis_fds(reading: dict[str, Any]) -> int:
    kinds: dict[str, int] = reading["fd_kinds"]
    return sum(n for kind, n in kinds.items() if kind != "redis")


def baseline(samples: list[dict[str, Any]], keys_before: int) -> dict[str, Any]:
    """Per worker, the lowest reading of each figure over `samples`; Redis keys as given."""
    names = samples[0]["workers"].keys()
    workers = {}
    for name in names:
        readings = [s["workers"][name] for s in samples]
        workers[name] = {
            "tasks": min(r["tasks"] for r in readings),
            "rss_kb": min(r["rss_kb"] for r in readings),
            "fds": min(r["fds"] for r in readings),
            "other_fds": min(non_redis_fds(r) for r in readings),
            "redis_fds": min(r["fd_kinds"]["redis"] for r in readings),
        }
    return {"workers": workers, "keys": keys_before}


def end_reading(sample: dict[str, Any]) -> dict[str, Any]:
    """One sample in the baseline's shape."""
    workers = {
        name: {
            "tasks": r.get("tasks"),
            "rss_kb": r["rss_kb"],
            "fds": r["fds"],
            "other_fds": non_redis_fds(r),
            "redis_fds": r["fd_kinds"]["redis"],
        }
        for name, r in sample["workers"].items()
    }
    return {"workers": workers, "keys": sample["keys"]}


def leaks(base: dict[str, Any], end: dict[str, Any], slack: Slack) -> list[str]:
    """What is not back to its baseline, one line each (empty: nothing leaked)."""
    found = []
    for name, b in base["workers"].items():
        e = end["workers"][name]
        if e["tasks"] is None or e["tasks"] > b["tasks"] + slack.tasks:
            found.append(f"{name}: {e['tasks']} asyncio tasks at the end, baseline {b['tasks']}")
        if e["other_fds"] > b["other_fds"] + slack.fds:
            found.append(
                f"{name}: {e['other_fds']} open fds (not Redis) at the end, "
                f"baseline {b['other_fds']}"
            )
        if e["redis_fds"] > b["redis_fds"] + slack.redis_pool + REDIS_POOL_EXTRA:
            found.append(
                f"{name}: {e['redis_fds']} Redis sockets at the end, more than the pool's "
                f"{slack.redis_pool} over the baseline {b['redis_fds']}"
            )
        grown_mb = (e["rss_kb"] - b["rss_kb"]) / 1024
        if grown_mb > slack.rss_mb:
            found.append(
                f"{name}: RSS grew {grown_mb:.1f} MB ({b['rss_kb'] // 1024} -> "
                f"{e['rss_kb'] // 1024} MB), more than the {slack.rss_mb:g} MB allowed"
            )
    if end["keys"] > base["keys"]:
        found.append(f"Redis: {end['keys']} keys after their TTL, baseline {base['keys']}")
    return found


def peaks(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest reading of each figure over the run, per worker, and of Redis keys."""
    good = [s for s in samples if "workers" in s]
    workers: dict[str, dict[str, Any]] = {}
    for s in good:
        for name, r in s["workers"].items():
            top = workers.setdefault(name, {"tasks": 0, "rss_kb": 0, "fds": 0, "clients": 0})
            for key in top:
                top[key] = max(top[key], r.get(key) or 0)
    keys = max((s["keys"] for s in good), default=0)
    return {"workers": workers, "keys": keys}


def cpu_percent(samples: list[dict[str, Any]], phase: str = "load") -> dict[str, float]:
    """Each worker's CPU use over `phase`, in percent of one core."""
    rows = [s for s in samples if s.get("phase") == phase and "workers" in s]
    if len(rows) < 2:
        return {}
    first, last = rows[0], rows[-1]
    seconds = last["t"] - first["t"]
    return {
        name: round((r["cpu_s"] - first["workers"][name]["cpu_s"]) / seconds * 100, 1)
        for name, r in last["workers"].items()
        if "cpu_s" in r
    }
