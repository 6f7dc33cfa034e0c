"""`python -m bench.soak`: many streams for minutes over two workers on Redis, every one verified.

Starts a real redis-server, the paced fake OpenAI upstream (`bench.upstream`)
and two `chatsock serve` workers (JWT auth, short session and log TTLs), then
the node clients (`bench/soak_clients.mjs`): `--streams` clients each run
streams back to back for the duration, with random disconnects resumed on the
other worker, random stops (some from the other worker), second tabs, and
`--connects` new sockets a second besides. Every stream is checked
(`bench/soak_verify.py`); afterwards, once the TTLs have run out, each
worker's asyncio tasks, RSS and fds and Redis's key count must be back to
their baseline (`bench/soak_leaks.py`). Samples every second go to the JSON
and the PNG. Exits 1 with the list of violations if anything broke.

    .venv/bin/python -m bench.soak --streams 500 --minutes 10 --connects 200 \\
        --out docs/soak.json --plot docs/soak.png
"""

from __future__ import annotations

import argparse
import json
import queue
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt

from bench.procs import ROOT, Service, free_port
from bench.soak_leaks import Slack, baseline, cpu_percent, end_reading, leaks, peaks
from bench.soak_plot import plot
from bench.soak_report import report, to_json
from bench.soak_sample import Probe, Sampler
from bench.soak_verify import verify
from tests.support.redis_server import RedisServer

CLIENTS = ROOT / "bench" / "soak_clients.mjs"
BASELINE_SAMPLES = 3
# aiohttp's client keeps an idle upstream connection 15 s; the settle waits it out.
KEEPALIVE_S = 15

# Each client is its own user, so the per-user limits are lifted only where
# the soak's pace needs it; the TTLs come from the environment (short).
CONFIG = """chain = ["up"]

[providers.up]
kind = "openai"
base_url = "{upstream}/v1"
api_key = "sk-soak-0123456789"
model = "soak"
max_retries = 0

[server]
log_level = "WARNING"
shutdown_grace_s = 1

[auth]
mode = "jwt"
jwt_secret = "{secret}"

[store]
max_sessions = 1000000
# The box is shared (CI, other jobs): a starved event loop must not read as Redis away.
op_timeout_s = 15

[limits]
max_streams_per_user = 1000
stream_starts_per_minute = 0
connections_per_ip = 0
socket_events_per_second = 0
"""

PROBABILITIES = {
    "resume": 0.3,  # a stream's client disconnects and resumes on the other worker
    "resume2": 0.3,  # ... and does it twice
    "stop": 0.2,  # a chat_stop at a random point
    "stopElsewhere": 0.5,  # ... sent by another socket of the user, on the other worker
    "secondTab": 0.2,  # a second tab joins on the other worker and follows to the end
    "delete": 0.5,  # the session is deleted through the HTTP API afterwards (else: TTL)
    "churnAuth": 0.6,  # a churn socket connects with a valid token
    "churnNoAuth": 0.2,  # ... with none (refused); the rest with a forged one (refused)
    "churnEvent": 0.5,  # an admitted churn socket sends one event before it goes
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--streams", type=int, default=40, help="concurrent streaming clients")
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--seconds", type=float, default=30.0, help="how long streams start")
    span.add_argument("--minutes", type=float, help="the same, in minutes")
    parser.add_argument("--connects", type=float, default=20, help="churn: new sockets a second")
    parser.add_argument("--tokens", default="10-40", help="deltas per reply: MIN-MAX")
    parser.add_argument("--rate", type=float, default=5, help="deltas a second per stream")
    parser.add_argument("--gap", type=float, default=1.0, help="most seconds between streams")
    parser.add_argument(
        "--ttl",
        type=int,
        default=15,
        help="store.session_ttl and stream.log_ttl (s): keep it above the longest stream",
    )
    parser.add_argument("--rss-slack-mb", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=None, help="replay a run's choices")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: --out's, .png)")
    parser.add_argument("--keep-logs", type=Path, default=None, help="keep logs and records here")
    args = parser.parse_args(argv)
    if args.minutes is not None:
        args.seconds = args.minutes * 60
    low, _, high = args.tokens.partition("-")
    args.tokens_min, args.tokens_max = int(low), int(high or low)
    args.seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    args.plot = args.plot or args.out.with_suffix(".png")
    return args


class Soak:
    """One run: the processes, the clients, the samples and the verdict."""

    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.secret = secrets.token_urlsafe(48)
        self.redis = RedisServer()
        self.upstream: Service | None = None
        self.workers: list[Service] = []
        self.marks: dict[str, float] = {}

    def start(self) -> None:
        self.redis.start()
        port = free_port()
        upstream = Service("upstream", ["-m", "bench.upstream", "--port", str(port)], port, {},
                           self.run_dir)  # fmt: skip
        self.upstream = upstream.start()
        config = self.run_dir / "chatsock.toml"
        config.write_text(CONFIG.format(upstream=upstream.url, secret=self.secret))
        for i in (1, 2):
            port = free_port()
            env = {
                "CHATSOCK_CONFIG": str(config),
                "REDIS_URL": self.redis.url,
                "CHATSOCK_SERVER__WORKER_ID": f"soak-{i}",
                "CHATSOCK_STORE__SESSION_TTL": str(self.args.ttl),
                "CHATSOCK_STREAM__LOG_TTL": str(self.args.ttl),
            }
            args = ["-m", "chatsock", "serve", "--host", "127.0.0.1", "--port", str(port)]
            self.workers.append(Service(f"worker-{i}", args, port, env, self.run_dir))
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Service.start, self.workers))

    def stop(self) -> None:
        for service in [*self.workers, self.upstream]:
            if service is not None:
                service.stop()
        self.redis.close()

    def token(self, i: int) -> str:
        claims = {"sub": f"soak-user-{i}", "exp": int(time.time()) + 6 * 3600}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def clients_args(self, records: Path) -> Path:
        a = self.args
        path = self.run_dir / "clients.json"
        path.write_text(json.dumps({
            "urls": [w.url for w in self.workers],
            "lanes": a.streams,
            "durationMs": a.seconds * 1000,
            "connectsPerSecond": a.connects,
            "tokensMin": a.tokens_min,
            "tokensMax": a.tokens_max,
            "rate": a.rate,
            "gapMs": a.gap * 1000,
            "users": [self.token(i) for i in range(max(a.streams, 2))],
            "badToken": jwt.encode({"sub": "intruder"}, "not-the-secret" * 4, algorithm="HS256"),
            "seed": a.seed,
            "tag": f"{a.seed}-{time.time():.0f}",
            "out": str(records),
            "p": PROBABILITIES,
        }))  # fmt: skip
        return path

    def run(self) -> dict[str, Any]:
        """Everything after start(): the load, the settle, the verdict (a dict for the JSON)."""
        a = self.args
        assert self.upstream is not None
        probes = [Probe(w.name, w.pid, w.url) for w in self.workers]
        sampler = Sampler(probes, self.redis.url, self.redis.port, self.upstream.port)
        keys_before = sampler.sample()["keys"]
        records = self.run_dir / "records.ndjson"
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is required: run `make deps`")
        stderr = (self.run_dir / "clients.log").open("wb")
        clients = subprocess.Popen(
            [node, str(CLIENTS), str(self.clients_args(records))],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(clients.stdout, lines), daemon=True).start()
        sampler.start()
        try:
            _expect(lines, "warm", 120, clients)
            sampler.phase = "baseline"
            time.sleep(BASELINE_SAMPLES * sampler.interval + 0.5)
            base = baseline(sampler.samples[-BASELINE_SAMPLES:], keys_before)
            self.marks["load"] = sampler.samples[-1]["t"]
            sampler.phase = "load"
            assert clients.stdin is not None
            clients.stdin.write("go\n")
            clients.stdin.flush()
            _expect(lines, "done", a.seconds + 600, clients, progress=True)
            clients.wait(60)
        finally:
            if clients.poll() is None:
                clients.kill()
                clients.wait()
            stderr.close()
        self.marks["clients done"] = sampler.samples[-1]["t"]
        sampler.phase = "settle"
        slack = Slack(rss_mb=a.rss_slack_mb)
        end, left = self._settle(sampler, base, slack)
        self.marks["settled"] = sampler.samples[-1]["t"]
        sampler.stop()
        verdict = verify(json.loads(line) for line in records.read_text().splitlines())
        violations = verdict.violations + left + self._worker_problems()
        return {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "streams": verdict.streams,
            "verified": verdict.verified,
            "counts": dict(verdict.counts),
            "clients": {k: v for k, v in verdict.summary.items() if k != "problems"},
            "violations": violations,
            "load_errors": verdict.load_errors,
            "baseline": base,
            "end": end,
            "peak": peaks(sampler.samples),
            "cpu_percent_under_load": cpu_percent(sampler.samples),
            "leftover_keys": sampler.key_patterns() if end["keys"] > base["keys"] else {},
            "marks": self.marks,
            "samples": sampler.samples,
        }

    def _settle(
        self, sampler: Sampler, base: dict[str, Any], slack: Slack
    ) -> tuple[dict[str, Any], list[str]]:
        """Wait for the TTLs (and idle keep-alives) to run out; the end reading and any leaks."""
        deadline = time.monotonic() + max(self.args.ttl, KEEPALIVE_S) + 45
        while True:
            sampler.expire_due_keys()
            time.sleep(sampler.interval + 0.1)
            end = end_reading(sampler.samples[-1])
            left = leaks(base, end, slack)
            if not left or time.monotonic() > deadline:
                return end, left
            # Keys without a TTL never go: no use waiting for them.
            if all(v.startswith("Redis:") for v in left) and sampler.only_keys_without_ttl():
                return end, left

    def _worker_problems(self) -> list[str]:
        problems = []
        for worker in self.workers:
            if worker.proc is None or worker.proc.poll() is not None:
                problems.append(f"{worker.name} exited during the soak")
            log = worker.log_path.read_text(errors="replace").splitlines()
            ends = Counter(
                next((line for line in log[i + 1 :] if line and not line[0].isspace()), "?")
                for i, line in enumerate(log)
                if line.startswith("Traceback")
            )
            problems += [
                f"{worker.name} logged {n} tracebacks ending {end!r} (see {worker.log_path})"
                for end, n in ends.items()
            ]
        return problems


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _expect(
    lines: queue.Queue[str],
    key: str,
    timeout: float,
    clients: subprocess.Popen[str],
    progress: bool = False,
) -> None:
    """Read the clients' JSON lines until one has `key` (printing progress on the way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if clients.poll() is not None:
                raise RuntimeError(f"the clients exited with {clients.returncode}") from None
            continue
        message = json.loads(line)
        if key in message:
            return
        if progress and "progress" in message:
            print("progress", json.dumps(message["progress"]), flush=True)
    raise RuntimeError(f"the clients sent no {key!r} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    print(f"soak: {args.streams} streaming clients for {args.seconds:g} s, "
          f"{args.connects:g} connects/s, seed {args.seed}", flush=True)  # fmt: skip
    run_dir = args.keep_logs or Path(tempfile.mkdtemp(prefix="chatsock-soak-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, run_dir)
    try:
        soak.start()
        result = soak.run()
    finally:
        soak.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(result))
    plot(result["samples"], result["marks"], args.plot)
    print(report(result), flush=True)
    print(f"wrote {args.out} and {args.plot}", flush=True)
    if args.keep_logs is None and not result["violations"]:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif result["violations"]:
        print(f"logs and records kept in {run_dir}", flush=True)
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
