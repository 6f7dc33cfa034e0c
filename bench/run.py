"""`python -m bench`: chatsock and the naive baseline side by side, one scenario at a time.

Per scenario and system: a flushed Redis, two fresh workers, the node load
generator connecting its sockets round robin to both, then (for a load) every
stream started over `RAMP_S` and checked. Worker CPU (/proc utime + stime),
worker RSS, and Redis `INFO commandstats` are taken around the run.
Prints one table, writes `latest.json` and `latest.png` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from bench import report
from bench.loadgen import LoadGen
from bench.metrics import commands_total, percentile, stream_figures
from bench.procs import ROOT, Service, cpu_seconds, free_port, rss_kb
from bench.scenarios import (
    DEFAULT,
    DURATION_S,
    QUICK,
    QUICK_DURATION_S,
    RAMP_S,
    Scenario,
    parse,
)
from bench.systems import EXTRA_SYSTEMS, SYSTEMS, start_workers, stop_workers
from tests.support.redis_server import RedisServer

SETTLE_S = 1.0


class Bench:
    """The shared parts of a run (Redis, the upstream) and the scenario runner."""

    def __init__(self, redis_server: RedisServer, upstream: Service, run_dir: Path) -> None:
        self.redis_server = redis_server
        self.upstream = upstream
        self.run_dir = run_dir
        # Time for the workers' memory to settle before a reading.
        self.settle_s = SETTLE_S
        self.redis = redis.Redis.from_url(redis_server.url)

    def close(self) -> None:
        self.redis.close()

    def run(self, scenario: Scenario, system: str, workers: list[Service] | None) -> dict[str, Any]:
        """One scenario on `system`: on `workers`, or on two fresh ones when None."""
        row: dict[str, Any] = {"scenario": scenario.name, "system": system}
        fresh = workers is None
        if workers is None:
            self.redis.flushall()
            try:
                workers = self.start(system)
            except RuntimeError as exc:
                return {**row, "error": str(exc)}
        try:
            time.sleep(self.settle_s)
            measure = self._idle if scenario.idle else self._load
            return {**row, **measure(scenario, system, workers)}
        except Exception as exc:  # A broken run is a row of the table, not the end of it.
            return {**row, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if fresh:
                stop_workers(workers)

    def start(self, system: str) -> list[Service]:
        return start_workers(system, self.upstream.url, self.redis_server.url, self.run_dir)

    def _loadgen(self, scenario: Scenario, system: str, workers: list[Service]) -> LoadGen:
        out = self.run_dir / f"{system}-{scenario.name}.json"
        out.unlink(missing_ok=True)
        return LoadGen(
            out,
            urls=[w.url for w in workers],
            connections=scenario.connections,
            streams=scenario.streams,
            tokens=scenario.tokens,
            rate=scenario.rate,
            rampMs=scenario.ramp_s * 1000,
            serial=scenario.serial,
            tag=f"{system}-{scenario.name}-{time.time():.0f}",
            timeoutMs=(
                scenario.tokens / scenario.rate * (scenario.streams if scenario.serial else 1)
                + scenario.ramp_s
                + 30
            )
            * 1000
            if scenario.streams
            else 0,
        )

    def _idle(self, scenario: Scenario, system: str, workers: list[Service]) -> dict[str, Any]:
        with self._loadgen(scenario, system, workers) as loadgen:
            warm = loadgen.warmed()["warm"]
            time.sleep(self.settle_s)
            before = _rss(workers)
            loadgen.go()
            connections = loadgen.connected()["connected"] - warm
            time.sleep(self.settle_s)
            connected = _rss(workers)
            loadgen.go()
            loadgen.finish()
        return {
            "connections": connections,
            "rss_kb_before": before,
            "rss_kb_connected": connected,
            "rss_kb_per_connection": (connected - before) / max(connections, 1),
        }

    def _load(self, scenario: Scenario, system: str, workers: list[Service]) -> dict[str, Any]:
        with self._loadgen(scenario, system, workers) as loadgen:
            loadgen.warmed()
            time.sleep(self.settle_s)
            before = _rss(workers)
            loadgen.go()
            loadgen.connected()
            time.sleep(self.settle_s)
            connected = _rss(workers)
            self._get("/stamps?clear=1")
            self.redis.config_resetstat()
            harness = [self.upstream.pid, self._redis_pid()]
            cpu_before = _cpu(p.pid for p in workers)
            harness_before = _cpu(harness)
            peak = _PeakRss(workers)
            loadgen.go()
            try:
                result = loadgen.finish()
            finally:
                peak.stop()
            cpu = _cpu(p.pid for p in workers) - cpu_before
            harness_cpu = _cpu(harness) - harness_before
        commands = commands_total(self.redis.info("commandstats"))
        figures = stream_figures(result, json.loads(self._get("/stamps")))
        seconds = (result["finished"] - result["begin"]) / 1000
        tokens = figures.delivered_tokens
        return {
            "streams": scenario.streams,
            "rate": scenario.rate,
            "tokens_per_stream": scenario.tokens,
            "offered_tps": scenario.offered,
            "delivered_tps": tokens / seconds if seconds else None,
            "seconds": seconds,
            "delivered_tokens": tokens,
            "worker_cpu_s": cpu,
            "harness_cpu_s": harness_cpu,
            "loadgen_cpu_s": result.get("cpuS"),
            "cpu_us_per_token": cpu / tokens * 1e6 if tokens else None,
            "latency_p50_ms": percentile(figures.latencies, 50),
            "latency_p99_ms": percentile(figures.latencies, 99),
            "ttft_overhead_p50_ms": percentile(figures.ttft_overheads, 50),
            "ttft_overhead_p99_ms": percentile(figures.ttft_overheads, 99),
            "rss_kb_before": before,
            "rss_kb_connected": connected,
            "rss_kb_peak": peak.peak,
            "rss_kb_per_stream": (peak.peak - connected) / scenario.streams,
            "redis_commands": commands,
            "redis_commands_per_token": commands / tokens if tokens else None,
            "verified": figures.verified,
            "failed": figures.failed,
            "failures": dict(figures.failures.most_common()),
        }

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.upstream.url + path, timeout=30) as reply:
            body: bytes = reply.read()
            return body

    def _redis_pid(self) -> int:
        return int(self.redis.info("server")["process_id"])


def _rss(workers: list[Service]) -> int:
    return sum(rss_kb(w.pid) for w in workers)


def _cpu(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


class _PeakRss:
    """The highest total RSS of the workers, sampled every 200 ms while a load runs."""

    def __init__(self, workers: list[Service]) -> None:
        self.workers = workers
        self.peak = _rss(workers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, _rss(self.workers))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _run_system(
    bench: Bench, system: str, scenarios: list[Scenario], fresh: bool
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    shared: list[Service] | None = None
    if not fresh:
        try:
            shared = bench.start(system)
        except RuntimeError as exc:
            return [{"scenario": s.name, "system": system, "error": str(exc)} for s in scenarios]
    try:
        for scenario in scenarios:
            rows.append(bench.run(scenario, system, shared))
            print(report.progress(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if shared is not None:
            stop_workers(shared)
    return rows


def run_bench(
    scenarios: list[Scenario],
    systems: list[str],
    out: Path,
    *,
    fresh: bool = True,
    settle_s: float = SETTLE_S,
) -> dict[str, Any]:
    """Run every scenario on every system; write latest.json and latest.png into `out`.

    `fresh`: two new workers for every scenario (memory figures start clean);
    otherwise one pair per system serves every scenario (quicker).
    """
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="chatsock-bench-") as tmp, RedisServer() as server:
        run_dir = Path(tmp)
        port = free_port()
        upstream = Service(
            "upstream", ["-m", "bench.upstream", "--port", str(port)], port, {}, run_dir
        )
        upstream.start()
        bench = Bench(server, upstream, run_dir)
        bench.settle_s = settle_s
        try:
            for system in systems:
                rows += _run_system(bench, system, scenarios, fresh)
        finally:
            bench.close()
            upstream.stop()
            # The workers' and the upstream's logs, for a run that failed streams.
            logs = out / "logs"
            shutil.rmtree(logs, ignore_errors=True)
            logs.mkdir()
            for log in run_dir.glob("*.log"):
                shutil.copy(log, logs / log.name)
    # Scenario by scenario, the systems side by side.
    order = {s.name: i for i, s in enumerate(scenarios)}
    rows.sort(key=lambda r: order[r["scenario"]])
    results = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": report.host(), "rows": rows}
    (out / "latest.json").write_text(json.dumps(results, indent=1))
    print(report.table(rows))
    if any(not s.idle for s in scenarios):
        from bench.plot import plot  # matplotlib only when there is something to draw

        plot(rows, out / "latest.png")
    return results


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke run: tiny loads, seconds")
    parser.add_argument(
        "--scenarios", help=f"comma-separated SxR or idleN (default: {','.join(DEFAULT)})"
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, of {', '.join(SYSTEMS + EXTRA_SYSTEMS)} (default: "
        f"{','.join(SYSTEMS)})",
    )
    parser.add_argument("--duration", type=float, help=f"seconds per stream (default {DURATION_S})")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="for latest.json and .png"
    )
    parser.add_argument(
        "--shared-workers",
        action="store_true",
        help="one worker pair per system for all scenarios (quicker; always so with --quick)",
    )
    args = parser.parse_args(argv)
    names = args.scenarios.split(",") if args.scenarios else list(QUICK if args.quick else DEFAULT)
    duration = args.duration or (QUICK_DURATION_S if args.quick else DURATION_S)
    ramp = 0.2 if args.quick else RAMP_S
    try:
        scenarios = [parse(name.strip(), duration, ramp) for name in names if name.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS + EXTRA_SYSTEMS]
    if unknown:
        known = ", ".join(SYSTEMS + EXTRA_SYSTEMS)
        parser.error(f"--systems: unknown {', '.join(unknown)} (use {known})")
    results = run_bench(
        scenarios,
        systems,
        args.out,
        fresh=not (args.quick or args.shared_workers),
        settle_s=0.3 if args.quick else SETTLE_S,
    )
    # Failed streams are a result (the baseline's under load); a broken run is not.
    sys.exit(1 if any(r.get("error") for r in results["rows"]) else 0)
