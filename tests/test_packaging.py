"""Installed from a wheel, outside the checkout, a worker serves its page.

The wheel is built from a copy of the sources as a release build would be (pip,
with build isolation, so pyproject's build requirements are what is checked),
with socket.io-client copied into `chatsock/static/vendor/` as the Dockerfile's
build stage does. It is installed with `pip install --target` into an empty
directory, and `python -S -m chatsock serve` runs from another empty directory
with only that target and the venv's site-packages (for the dependencies) on its
path: `-S` skips the venv's .pth files, so the checkout's editable install
cannot be picked up instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsock.config import ServerConfig
from tests.support.process import ROOT, free_port, wait_healthy

pytestmark = pytest.mark.timeout(240)

PAGE_FILES = ("index.html", "style.css", "favicon.svg", "dist/page.js")
SOCKET_IO = ROOT / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"


def _run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding chatsock as `pip install --target` put it there from a wheel."""
    if not SOCKET_IO.is_file():
        pytest.fail("node_modules is missing: run `npm ci` (make test does)")
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "chatsock", source / "chatsock", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.rmtree(source / "chatsock" / "static" / "vendor", ignore_errors=True)
    (source / "chatsock" / "static" / "vendor").mkdir()
    shutil.copy(SOCKET_IO, source / "chatsock" / "static" / "vendor" / SOCKET_IO.name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "-w", str(base / "dist"), "."], cwd=source)
    (wheel,) = (base / "dist").glob("chatsock-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in (*PAGE_FILES, "vendor/socket.io.min.js"):
        assert f"chatsock/static/{name}" in names, sorted(names)
    target = base / "site"
    _run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], cwd=base)
    return target


def _env(target: Path) -> dict[str, str]:
    dependencies = sysconfig.get_paths()["purelib"]
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "TMPDIR", "LANG")}
    return {**keep, "PYTHONPATH": os.pathsep.join([str(target), dependencies])}


def test_the_wheel_is_what_runs(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import chatsock.web as w; print(w.PACKAGE_STATIC)"],
        cwd=tmp_path,
        env=_env(installed),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == installed / "chatsock" / "static"


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[str]:
    """The URL of `python -S -m chatsock serve` run from an empty directory."""
    port = free_port()
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-m", "chatsock", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=_env(installed),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, 60, "installed worker", lambda: log_path.read_text("replace"))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_an_installed_worker_serves_its_page_from_any_directory(served: str) -> None:
    status, page = _get(f"{served}/")
    assert status == 200
    assert page == (ROOT / "chatsock" / "static" / "index.html").read_bytes()
    for name in PAGE_FILES[1:]:
        status, body = _get(f"{served}/static/{name}")
        assert status == 200, name
        assert body == (ROOT / "chatsock" / "static" / name).read_bytes()
    status, client = _get(f"{served}/static/vendor/socket.io.min.js")
    assert (status, client) == (200, SOCKET_IO.read_bytes())
    assert _get(f"{served}/static/nope.js")[0] == 404


# -- the image and docker-compose (no Docker daemon here: their text is checked) --------


def _runtime_stage() -> str:
    """The Dockerfile's last stage: what the image is."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    return dockerfile.rsplit("\nFROM ", 1)[1]


def test_the_runtime_image_is_slim_unprivileged_and_drains_on_sigterm() -> None:
    stage = _runtime_stage()
    assert stage.startswith("python:3.11-slim\n")
    assert "npm" not in stage
    assert "node" not in stage
    assert "requirements.lock" not in stage  # the test tools it pins never reach the image
    users = [line.split()[1] for line in stage.splitlines() if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    assert "\nSTOPSIGNAL SIGTERM\n" in stage
    assert "\nHEALTHCHECK " in stage
    assert '\nCMD ["chatsock", "serve"' in stage  # exec form: chatsock itself gets SIGTERM


def test_compose_waits_out_the_drain_and_keeps_redis_data() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    server = ServerConfig()  # the defaults compose runs with
    bound = server.drain_timeout_s + server.shutdown_grace_s + 1
    (grace,) = (int(g) for g in re.findall(r"^\s+stop_grace_period: (\d+)s$", compose, re.M))
    assert grace >= bound
    assert '"--appendonly", "yes"' in compose
    assert "redis-data:/data" in compose
    block = compose.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    services = re.findall(r"^  ([a-z0-9-]+):$", block, re.M)
    assert services == ["redis", "chatsock-1", "chatsock-2", "nginx"]
    assert compose.count("restart: unless-stopped") == 3  # redis, the workers' anchor, nginx
    nginx = compose.split("\n  nginx:\n", 1)[1]
    for worker in services[1:3]:
        assert f"      {worker}:\n        condition: service_healthy" in nginx
