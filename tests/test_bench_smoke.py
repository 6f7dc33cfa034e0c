"""The benchmark harness runs end to end (`python -m bench --quick`); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.node, pytest.mark.redis, pytest.mark.stress]


@pytest.mark.timeout(300)
def test_quick_bench_verifies_every_stream_of_both_systems(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| scenario | system |" in run.stdout

    rows = json.loads((tmp_path / "latest.json").read_text())["rows"]
    assert {(r["system"], r["scenario"]) for r in rows} == {
        (system, scenario)
        for system in ("chatsock", "baseline")
        for scenario in ("10x20", "idle20")
    }
    for row in rows:
        assert "error" not in row, row
        if row["scenario"] == "idle20":
            assert row["connections"] == 20
            assert row["rss_kb_per_connection"] is not None
        else:
            assert (row["verified"], row["failed"]) == (10, 0), row["failures"]
            assert row["delivered_tokens"] == 10 * row["tokens_per_stream"]
            assert row["latency_p99_ms"] is not None
            assert row["ttft_overhead_p50_ms"] is not None
            assert row["redis_commands"] > 0
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
