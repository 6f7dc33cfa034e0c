"""The test helper that runs node and Chromium: a timed-out run kills its children too."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.subprocesses import run_group


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by init) counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_a_timed_out_run_keeps_its_output_and_leaves_no_child(tmp_path: Path) -> None:
    # The child outlives its parent's stdout, as node --test's file runner would.
    script = "sleep 60 & echo child $!; echo said; exec sleep 60"
    done = await run_group(["bash", "-c", script], within=1, cwd=tmp_path)
    assert done.timed_out
    assert done.returncode == -9
    assert "said" in done.out
    assert "timed out" in done.explain()
    child = int(done.out.split()[1])
    assert not _alive(child)


async def test_a_run_that_ends_reports_its_code_and_both_streams(tmp_path: Path) -> None:
    done = await run_group(
        ["bash", "-c", "echo out; echo err >&2; exit 3"], within=10, cwd=tmp_path
    )
    assert (done.returncode, done.out, done.err, done.timed_out) == (3, "out\n", "err\n", False)
    merged = await run_group(
        ["bash", "-c", "echo a; echo b >&2"], within=10, cwd=tmp_path, merge=True
    )
    assert (merged.out, merged.err) == ("a\nb\n", "")
