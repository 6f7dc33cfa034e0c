"""Drives bench/loadgen.mjs: connect, pause for a measurement, go, and read the result."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bench.procs import ROOT

SCRIPT = ROOT / "bench" / "loadgen.mjs"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "socket.io-client").is_dir():
        raise RuntimeError("node and node_modules/socket.io-client are needed: run `make deps`")
    return node


class LoadGen:
    """One node load generator process, driven step by step (see bench/loadgen.mjs).

    `warmed()`, `go()`, `connected()`, `go()`, `finish()`: measure the
    workers between the steps.
    """

    def __init__(self, out: Path, **args: Any) -> None:
        self.out = out
        # stderr to a file: a full pipe nobody reads would block node.
        self.log_path = out.with_suffix(".log")
        self._log = open(self.log_path, "w")  # closed in close()
        self.proc = subprocess.Popen(
            [node_binary(), str(SCRIPT), json.dumps({**args, "out": str(out)})],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self.proc.wait(10)
            stderr = self.log_path.read_text(errors="replace")
            raise RuntimeError(f"loadgen exited with {self.proc.returncode}: {stderr[-2000:]}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def warmed(self) -> dict[str, Any]:
        """Wait until one socket per worker has run its warm-up stream."""
        return self._line()

    def connected(self) -> dict[str, Any]:
        """Wait until every socket is connected."""
        return self._line()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        """Wait for the end; the result file's content (empty for an idle run)."""
        self._line()
        self.proc.wait(30)
        if not self.out.exists():
            return {}
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
