"""Runs tests/js/client.mjs (the official socket.io-client under node)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.subprocesses import run_group

ROOT = Path(__file__).resolve().parent.parent.parent
CLIENT = ROOT / "tests" / "js" / "client.mjs"


def require_node() -> str:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("node and node_modules/socket.io-client are required: run `make test`")
    return node


async def run_node_client(url: str, scenario: str, **args: Any) -> dict[str, Any]:
    command = [require_node(), str(CLIENT), url, scenario, json.dumps(args)]
    done = await run_group(command, within=60, cwd=ROOT)
    assert done.returncode == 0, done.explain()
    result: dict[str, Any] = json.loads(done.out.strip().splitlines()[-1])
    return result
