"""Real chatsock worker processes for tests (`python -m chatsock serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tests.support.limits import RELAXED_ENV

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(
    proc: subprocess.Popen[bytes], url: str, timeout: float, name: str, log: Callable[[], str]
) -> None:
    """Until `url`/healthz answers 200; RuntimeError with the log's tail if the
    process exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer /healthz within {timeout} s:\n{log()}")


class Worker:
    """One `chatsock serve` process on a loopback port, with its log captured."""

    def __init__(self, env: dict[str, str] | None = None, config: Path | None = None) -> None:
        self.port = free_port()
        # Per-address limits off unless the test sets them (tests/support/limits.py).
        self.env = {**RELAXED_ENV, **os.environ, **(env or {})}
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"chatsock-worker-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Worker:
        args = [
            sys.executable,
            "-m",
            "chatsock",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.config is not None:
            args += ["--config", str(self.config)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_healthy(self.proc, self.url, timeout, "worker", self.log)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            self.log_path.unlink()
        except OSError:
            pass


@contextlib.asynccontextmanager
async def worker_pair(redis_url: str, **env: str) -> AsyncIterator[tuple[Worker, Worker]]:
    """Two workers (`worker-a`, `worker-b`) on the Redis at `redis_url`, started
    together with `env` and stopped after."""
    common = {"REDIS_URL": redis_url, **env}
    a = Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-a"})
    b = Worker(env={**common, "CHATSOCK_SERVER__WORKER_ID": "worker-b"})
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    try:
        yield a, b
    finally:
        await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
