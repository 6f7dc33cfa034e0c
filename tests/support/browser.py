"""Runs a playwright-core script (tests/js/*.mjs) in Debian's headless Chromium."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from tests.support.node import ROOT, require_node
from tests.support.subprocesses import run_group


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is required: run scripts/system-deps.sh (make test does)")
    return path


async def run_browser_script(script: str, *args: str, within: float = 90) -> dict[str, Any]:
    """Run tests/js/`script` with `args` and the Chromium path; its last line is JSON."""
    args_ = [require_node(), str(ROOT / "tests" / "js" / script), *args, chromium()]
    done = await run_group(args_, within=within, cwd=ROOT)
    assert done.returncode == 0, done.explain()
    result: dict[str, Any] = json.loads(done.out.strip().splitlines()[-1])
    return result
