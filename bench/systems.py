"""The two systems under test, each as two worker processes sharing one Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.procs import Service, free_port

SYSTEMS = ("chatsock", "baseline")
# Also runnable with --systems: chatsock on its in-memory store (each worker
# alone; the load generator never follows a stream across workers).
EXTRA_SYSTEMS = ("chatsock-memory",)

# One anonymous user runs every stream from one address, so the per-user and
# per-address limits are lifted; everything else is chatsock's default.
CHATSOCK_CONFIG = """chain = ["up"]

[providers.up]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "sk-bench-0123456789"
model = "bench"
max_retries = 0

[server]
log_level = "WARNING"
shutdown_grace_s = 1

[store]
max_sessions = 1000000

[limits]
max_streams_per_user = 1000000
stream_starts_per_minute = 0
connections_per_ip = 0
socket_events_per_second = 0
"""


def _chatsock(i: int, port: int, upstream: str, redis_url: str, run_dir: Path) -> Service:
    config = run_dir / "chatsock.toml"
    config.write_text(CHATSOCK_CONFIG.format(upstream=upstream))
    args = ["-m", "chatsock", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {
        "CHATSOCK_CONFIG": str(config),
        "REDIS_URL": redis_url,
        "CHATSOCK_SERVER__WORKER_ID": f"bench-{i}",
    }
    name = "chatsock" if redis_url else "chatsock-memory"
    return Service(f"{name}-{i}", args, port, env, run_dir)


def _chatsock_memory(i: int, port: int, upstream: str, _redis_url: str, run_dir: Path) -> Service:
    return _chatsock(i, port, upstream, "", run_dir)


def _baseline(i: int, port: int, upstream: str, redis_url: str, run_dir: Path) -> Service:
    args = ["-m", "bench.baseline", "--port", str(port), "--redis-url", redis_url]
    args += ["--upstream", f"{upstream}/v1"]
    return Service(f"baseline-{i}", args, port, {}, run_dir)


def start_workers(system: str, upstream: str, redis_url: str, run_dir: Path) -> list[Service]:
    """Two started workers of `system`; stopped again if either fails to start."""
    make = {"chatsock": _chatsock, "chatsock-memory": _chatsock_memory, "baseline": _baseline}[
        system
    ]
    workers = [make(i, free_port(), upstream, redis_url, run_dir) for i in (1, 2)]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(w.start) for w in workers]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        stop_workers(workers)
        raise RuntimeError(f"{system} workers did not start: {failed[0]}")
    return workers


def stop_workers(workers: list[Service]) -> None:
    with ThreadPoolExecutor(len(workers) or 1) as pool:
        list(pool.map(Service.stop, workers))
