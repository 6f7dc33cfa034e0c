"""The 30-second soak (`python -m bench.soak`): nothing lost, duplicated or leaked.

Two real `chatsock serve` workers on one real redis-server, the paced fake
OpenAI upstream, and node socket.io-client clients: 40 clients run streams
back to back for 30 s, disconnecting at random points and resuming on the
other worker, stopping (some from the other worker), opening second tabs,
while 20 new sockets a second connect (with a valid, missing or forged
token) and go. The tool checks every stream (seqs contiguous from 1 with no
duplicate per follower, one terminal each, the text equal to the stored
reply) and, after the 15 s TTLs, that each worker's asyncio tasks, fds and
RSS (within 40 MB) and Redis's key count are back to their baseline. No
timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.node, pytest.mark.redis, pytest.mark.stress]


@pytest.mark.timeout(360)
def test_thirty_second_soak_loses_duplicates_and_leaks_nothing(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--streams", "40", "--seconds", "30",
         "--connects", "20", "--tokens", "5-20", "--rate", "10", "--ttl", "15",
         "--out", str(out), "--keep-logs", str(tmp_path / "logs")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=340,
    )  # fmt: skip
    assert out.exists(), run.stdout + run.stderr
    result = json.loads(out.read_text())
    counts = result["counts"]
    # The run did what a soak is for: streams, resumes, stops, second tabs, churn.
    assert result["streams"] >= 40, run.stdout
    assert counts["resumes"] > 0
    assert counts["stops"] > 0
    assert counts["second_tabs"] > 0
    assert result["clients"]["churnLaunched"] >= 20 * 10  # fewer on a saturated box
    assert result["verified"] == result["streams"], run.stdout
    assert (tmp_path / "soak.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # Nothing lost, duplicated or leaked: Redis keys included (the session indexes
    # once kept every expired session's id; the soak found it).
    assert result["violations"] == [], run.stdout
    assert run.returncode == 0, run.stdout + run.stderr
    for name, base in result["baseline"]["workers"].items():
        assert result["end"]["workers"][name]["tasks"] <= base["tasks"], name
    assert result["end"]["keys"] == result["baseline"]["keys"]
