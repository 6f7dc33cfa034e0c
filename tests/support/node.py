"""Runs tests/js/client.mjs (the official socket.io-client under node)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CLIENT = ROOT / "tests" / "js" / "client.mjs"


def require_node() -> str:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("node and node_modules/socket.io-client are required: run `make test`")
    return node


async def run_node_client(url: str, scenario: str, **args: Any) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        require_node(),
        str(CLIENT),
        url,
        scenario,
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result
