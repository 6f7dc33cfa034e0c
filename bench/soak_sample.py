"""What the soak watches every second: each worker's RSS, asyncio tasks and open fds, Redis's keys.

Tasks come from the worker's own `/metrics` (`chatsock_asyncio_tasks`), RSS and
fds from /proc. An fd is classed by what it is: a socket to Redis, a socket to
the upstream, any other socket (clients, the listener), or not a socket. The
Redis connection pool keeps what it opened under load (up to
`store.max_connections`), so Redis sockets are held to that bound, not to the
baseline.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.procs import cpu_seconds, rss_kb

GAUGES = {
    "chatsock_asyncio_tasks": "tasks",
    "chatsock_stream_tasks": "stream_tasks",
    "chatsock_active_streams": "streams",
    "chatsock_socketio_clients": "clients",
}


def _socket_ports(pid: int) -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port), from the process's network namespace."""
    ports: dict[str, tuple[int, int]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, inode = cols[1], cols[2], cols[9]
            ports[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return ports


def fd_kinds(pid: int, redis_port: int, upstream_port: int) -> dict[str, int]:
    """The process's open fds by kind: redis, upstream, socket (other), file (not a socket)."""
    kinds = {"redis": 0, "upstream": 0, "socket": 0, "file": 0}
    ports = _socket_ports(pid)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while listed
        if not target.startswith("socket:["):
            kinds["file"] += 1
            continue
        remote = ports.get(target[8:-1], (0, 0))[1]
        kind = {redis_port: "redis", upstream_port: "upstream"}.get(remote, "socket")
        kinds[kind] += 1
    return kinds


def scrape(url: str) -> dict[str, float]:
    """The soak's gauges from a worker's /metrics (missing ones are absent)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            found[GAUGES[name]] = float(value)
    return found


@dataclass
class Probe:
    """How to read one worker."""

    name: str
    pid: int
    url: str


@dataclass
class Sampler:
    """Samples every worker and Redis each `interval` seconds on a thread of its own."""

    probes: list[Probe]
    redis_url: str
    redis_port: int
    upstream_port: int
    interval: float = 1.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    phase: str = "start"
    _origin: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._redis = redis.Redis.from_url(self.redis_url)

    def sample(self) -> dict[str, Any]:
        """One reading of everything, appended to `samples`."""
        workers: dict[str, Any] = {}
        for probe in self.probes:
            reading: dict[str, Any] = {"rss_kb": rss_kb(probe.pid), "cpu_s": cpu_seconds(probe.pid)}
            kinds = fd_kinds(probe.pid, self.redis_port, self.upstream_port)
            reading.update(fds=sum(kinds.values()), fd_kinds=kinds)
            try:
                reading.update(scrape(probe.url))
            except OSError as exc:
                reading["scrape_error"] = str(exc)
            workers[probe.name] = reading
        info = self._redis.info("memory")
        row = {
            "t": round(time.monotonic() - self._origin, 2),
            "phase": self.phase,
            "workers": workers,
            "keys": int(self._redis.dbsize()),
            "redis_used_kb": int(info["used_memory"]) // 1024,
        }
        self.samples.append(row)
        return row

    def expire_due_keys(self) -> None:
        """Touch every key once (SCAN), so Redis drops the expired ones now, not lazily."""
        for _ in self._redis.scan_iter(count=1000):
            pass

    def only_keys_without_ttl(self, most: int = 1000) -> bool:
        """Whether every key left (when few) has no TTL, so none of them will expire."""
        if self._redis.dbsize() > most:
            return False
        return all(self._redis.ttl(key) == -1 for key in self._redis.scan_iter(count=1000))

    def key_patterns(self, limit: int = 20) -> dict[str, str]:
        """Keys left, by name with ids blanked (what leaked): how many, their TTL and size."""
        shapes: dict[str, list[int]] = {}
        for key in self._redis.scan_iter(count=1000):
            parts = key.decode(errors="replace").split(":")
            shape = ":".join("*" if i == 2 else p for i, p in enumerate(parts))
            found = shapes.setdefault(shape, [0, 0, 0])  # keys, without a TTL, members
            found[0] += 1
            found[1] += self._redis.ttl(key) == -1
            kind = self._redis.type(key)
            if kind == b"zset":
                found[2] += int(self._redis.zcard(key))
            elif kind == b"set":
                found[2] += int(self._redis.scard(key))
        top = sorted(shapes.items(), key=lambda kv: -kv[1][0])[:limit]
        return {
            shape: f"{n} keys, {no_ttl} without a TTL, {members} members in all"
            for shape, (n, no_ttl, members) in top
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OSError, redis.RedisError) as exc:
                self.samples.append({"t": time.monotonic() - self._origin, "error": str(exc)})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._redis.close()
