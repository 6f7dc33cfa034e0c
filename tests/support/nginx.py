"""Debian's nginx running deploy/nginx/chatsock.conf in front of test workers."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.process import ROOT, free_port

SITE_CONF = ROOT / "deploy" / "nginx" / "chatsock.conf"


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError("nginx is not installed: run scripts/system-deps.sh (make test does)")


class Nginx:
    """nginx with the repo's site config, the upstreams pointing at `ports`."""

    def __init__(self, ports: list[int]) -> None:
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="chatsock-nginx-")
        self.dir = Path(self._tmp.name)
        self.dir.chmod(0o755)
        (self.dir / "chatsock-upstreams.conf").write_text(
            "".join(f"server 127.0.0.1:{port};\n" for port in ports)
        )
        (self.dir / "chatsock-listen.conf").write_text(f"listen 127.0.0.1:{self.port};\n")
        (self.dir / "nginx.conf").write_text(
            f"""
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
user root;
events {{ worker_connections 256; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    include {SITE_CONF};
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> Nginx:
        with open(self.dir / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(
                [find_nginx(), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                stderr=stderr,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.dir / "stderr.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited: {err}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not come up")

    def access_log(self) -> str:
        path = self.dir / "access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._tmp.cleanup()
