"""Runs a playwright-core script (tests/js/*.mjs) in Debian's headless Chromium."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import pytest

from tests.support.node import ROOT, require_node


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is required: run scripts/system-deps.sh (make test does)")
    return path


async def run_browser_script(script: str, *args: str, within: float = 90) -> dict[str, Any]:
    """Run tests/js/`script` with `args` and the Chromium path; its last line is JSON."""
    proc = await asyncio.create_subprocess_exec(
        require_node(), str(ROOT / "tests" / "js" / script), *args, chromium(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result
