"""A real redis-server on a free loopback port, for tests and plain scripts.

It can be stopped (politely or with SIGKILL) and started again on the same
port, which is what fault tests need: clients keep their URL and must find
the server again by themselves.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

_SEARCH_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")


class RedisServerMissing(RuntimeError):
    """No redis-server binary was found."""


def find_redis_server() -> str:
    """The redis-server binary from PATH or the usual system directories."""
    found = shutil.which("redis-server")
    if found:
        return found
    for directory in _SEARCH_DIRS:
        candidate = Path(directory) / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RedisServerMissing(
        "redis-server was not found on PATH or in /usr/bin, /usr/sbin: "
        "run scripts/system-deps.sh (installs Debian's redis-server) and retry"
    )


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _resp(*args: str | bytes) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class RedisServer:
    """One redis-server process bound to 127.0.0.1, without persistence.

    `start()` waits until it answers PING; `stop(kill=True)` sends SIGKILL.
    The port is chosen once, so a restart comes back at the same URL. Use it
    as a context manager or call `start()`/`close()` yourself.
    """

    def __init__(self, port: int | None = None, *, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="chatsock-redis-")
        self.dir = Path(self._tmp.name)
        self.logfile = self.dir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (no-op when running) and wait until it answers PING."""
        if self.running:
            return self
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.logfile),
            "--daemonize", "no",
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {self._process.returncode}:\n"
                    f"{self._log_tail()}"
                )
            try:
                if self.command("PING") == b"+PONG":
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop(kill=True)
        raise RuntimeError(
            f"redis-server on port {self.port} did not answer PING within {timeout}s:\n"
            f"{self._log_tail()}"
        )

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM and wait, or SIGKILL with `kill=True`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port."""
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._tmp.cleanup()

    def command(self, *args: str | bytes, timeout: float = 2.0) -> bytes:
        """Send one command; return the first line of the reply (e.g. b"+OK")."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(_resp(*args))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"redis-server on port {self.port} closed the connection")
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def flush(self) -> None:
        """Remove every key."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL on port {self.port} failed: {reply!r}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
