"""chatsock-client (clients/js) under node:test, against real workers.

Two real `chatsock serve` workers share one real redis-server; the node test
files in clients/js/test get their URLs in CHATSOCK_URL and CHATSOCK_URL_B and
cover the client (both transports, reasoning streams, regenerate), the React
hook (jsdom) and the Vue composable (jsdom), each against these servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest

from tests.fakes.upstream import FakeOpenAI, Reply
from tests.support.invariants import assert_none, log_problems, worker_problems
from tests.support.nginx import Nginx
from tests.support.process import ROOT, Worker, free_port
from tests.support.redis_server import RedisServer
from tests.support.subprocesses import run_group

pytestmark = [pytest.mark.node, pytest.mark.redis, pytest.mark.timeout(180)]

PACKAGE = ROOT / "clients" / "js"


def _require_built() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run scripts/system-deps.sh (make test does)")
    if not (PACKAGE / "node_modules" / "socket.io-client").is_dir():
        pytest.fail(
            "clients/js/node_modules is missing: run `make deps` "
            "(or `cd clients/js && npm ci && npm run build`)"
        )
    if not (PACKAGE / "dist" / "index.js").is_file():
        pytest.fail(
            "clients/js/dist is missing: run `make deps` (or `cd clients/js && npm run build`)"
        )
    return node


@pytest.fixture
async def workers(private_redis_server: RedisServer) -> AsyncIterator[list[Worker]]:
    env = {
        "REDIS_URL": private_redis_server.url,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": "40",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "100",
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_SESSION": "4",
        "CHATSOCK_SERVER__TRUSTED_PROXIES": '["127.0.0.1"]',
    }
    made = [Worker(env={**env, "CHATSOCK_SERVER__WORKER_ID": f"js-{n}"}) for n in "ab"]
    try:
        await asyncio.gather(*(asyncio.to_thread(w.start) for w in made))
        yield made
    finally:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in made))


async def _node_test(
    file: str,
    workers: list[Worker],
    *,
    build_tests: bool = False,
    env: dict[str, str] | None = None,
    only: str | None = None,
    clean: bool = True,
) -> None:
    """Runs clients/js/test/`file` with the workers' URLs; then checks the workers (`clean`)."""
    node = _require_built()
    full_env = {
        **os.environ,
        "CHATSOCK_URL": workers[0].url,
        "CHATSOCK_URL_B": workers[1].url,
        **(env or {}),
    }
    component = PACKAGE / "test" / "components" / "Chat.tsx"
    built = PACKAGE / "test-dist" / "Chat.js"
    if build_tests and (not built.is_file() or built.stat().st_mtime < component.stat().st_mtime):
        # `make deps` builds it; this catches an edit made since.
        await _run([node, "node_modules/typescript/bin/tsc", "-p", "tsconfig.test.json"], full_env)
    pattern = ["--test-name-pattern", only] if only else []
    await _run([node, "--test", "--test-reporter=spec", *pattern, f"test/{file}"], full_env)
    if clean:
        await _assert_workers_clean(workers)


async def _assert_workers_clean(workers: list[Worker]) -> None:
    """Every stream ended, no stream task left, loops alive, no bug in the logs."""
    problems: list[str] = []
    running = {w.url: w for w in workers if w.proc is not None and w.proc.poll() is None}
    async with aiohttp.ClientSession() as http:
        for url, worker in running.items():
            problems += await worker_problems(http, url)
            problems += log_problems(url, worker.log())
    assert_none(problems)


async def _run(args: list[str], env: dict[str, str]) -> None:
    done = await run_group(args, within=150, cwd=PACKAGE, env=env, merge=True)
    print(done.out)  # the spec reporter's lines, shown with -s or on failure
    assert done.returncode == 0, done.explain()


async def test_socket_transport(workers: list[Worker]) -> None:
    await _node_test("socket.test.mjs", workers)


async def test_http_transport(workers: list[Worker]) -> None:
    await _node_test("http.test.mjs", workers)


async def test_reasoning_and_regenerate(workers: list[Worker]) -> None:
    """Reasoning streams (opt-in, resume mid-reasoning on both transports and
    across workers) and regenerate (replace, idempotent retry, resume)."""
    await _node_test("reasoning.test.mjs", workers, clean=False)
    await _node_test("regenerate.test.mjs", workers)


async def test_react_hook(workers: list[Worker]) -> None:
    await _node_test("react.test.mjs", workers, build_tests=True)


async def test_react_error_and_retry(tmp_path: Path) -> None:
    """A provider failing mid-reply: the partial and an alert, then Retry answers whole."""
    async with FakeOpenAI() as upstream:
        upstream.enqueue(
            Reply(pieces=["Partial ", "answer ", "lost"], ending="reset", cut_after=2),
            Reply(pieces=["Whole ", "answer."]),
        )
        config = tmp_path / "config.toml"
        config.write_text(
            f'''chain = ["fake"]
[providers.fake]
kind = "openai"
base_url = "{upstream.base_url}"
api_key = "sk-test-not-a-real-key"
model = "fake-model"
max_retries = 0
'''
        )
        worker = Worker(config=config)
        try:
            await asyncio.to_thread(worker.start)
            await _node_test(
                "react.test.mjs",
                [worker, worker],
                build_tests=True,
                env={"CHATSOCK_FAILING_URL": worker.url},
                only="error",
            )
        finally:
            await asyncio.to_thread(worker.stop)


async def test_vue_composable(workers: list[Worker]) -> None:
    await _node_test("vue.test.mjs", workers)


async def test_in_chromium_from_another_origin(private_redis_server: RedisServer) -> None:
    """The built ESM in Debian's Chromium, served by a page on another port (CORS)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is required: run scripts/system-deps.sh (make test does)")
    page_port = free_port()
    worker = Worker(
        env={
            "REDIS_URL": private_redis_server.url,
            "CHATSOCK_DEMO_TOKENS_PER_SECOND": "40",
            "CHATSOCK_SERVER__CORS_ALLOWED_ORIGINS": json.dumps([f"http://127.0.0.1:{page_port}"]),
        }
    )
    try:
        await asyncio.to_thread(worker.start)
        await _node_test(
            "browser.test.mjs",
            [worker, worker],
            env={"CHATSOCK_PAGE_PORT": str(page_port), "CHATSOCK_CHROMIUM": chromium},
        )
    finally:
        await asyncio.to_thread(worker.stop)


async def test_jwt_mode() -> None:
    secret = "j" * 64
    worker = Worker(
        env={
            "CHATSOCK_AUTH__MODE": "jwt",
            "CHATSOCK_JWT_SECRET": secret,
            "CHATSOCK_DEMO_TOKENS_PER_SECOND": "30",
        }
    )
    now = int(time.time())
    tokens = {
        f"CHATSOCK_TOKEN_{user.upper()}": jwt.encode(
            {"sub": user, "iat": now, "exp": now + 600}, secret
        )
        for user in ("alice", "bob")
    }
    try:
        await asyncio.to_thread(worker.start)
        await _node_test(
            "jwt.test.mjs",
            [worker, worker],
            env={"CHATSOCK_JWT_URL": worker.url, "CHATSOCK_JWT_SECRET": secret, **tokens},
            clean=False,  # its API asks for a token; the log is checked below
        )
        assert_none(log_problems("jwt worker", worker.log()))
    finally:
        await asyncio.to_thread(worker.stop)


async def test_drain_behind_nginx(workers: list[Worker]) -> None:
    """SIGTERM (sent by the node test) to the worker running the streams, behind nginx."""
    nginx = Nginx([w.port for w in workers]).start()
    try:
        described = [{"url": w.url, "pid": w.proc.pid} for w in workers if w.proc is not None]
        await _node_test(
            "drain.test.mjs",
            workers,
            env={"CHATSOCK_NGINX_URL": nginx.url, "CHATSOCK_WORKERS": json.dumps(described)},
            clean=False,
        )
    finally:
        nginx.stop()
    deadline = time.monotonic() + 60
    while not any(w.proc is not None and w.proc.poll() is not None for w in workers):
        assert time.monotonic() < deadline, "the drained worker did not exit"
        await asyncio.sleep(0.1)
    leaving = [w for w in workers if w.proc is not None and w.proc.poll() is not None]
    assert len(leaving) == 1
    assert leaving[0].proc is not None
    assert leaving[0].proc.returncode == 0, leaving[0].log()
    assert_none(log_problems("leaving", leaving[0].log()))
    await _assert_workers_clean(workers)


def test_docs_show_the_components_the_tests_render() -> None:
    """docs/clients.md's React and Vue examples are the files the tests render."""
    docs = (ROOT / "docs" / "clients.md").read_text()
    for name in ("Chat.tsx", "Chat.vue"):
        source = (PACKAGE / "test" / "components" / name).read_text().strip()
        assert source in docs, f"docs/clients.md no longer shows clients/js/test/components/{name}"
