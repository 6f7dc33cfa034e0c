"""Run a helper program (node, a node test file, Chromium's driver) with a deadline.

The program runs in a process group of its own. At the deadline the whole group
is killed: `node --test` runs each file in a child, and playwright starts
Chromium, which would outlive a killed parent (one such orphan reconnected to
stopped workers for ten minutes). What it printed until then is kept, so a
timed-out run still shows where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int
    out: str
    err: str  # empty when stderr was merged into `out`
    timed_out: bool

    def explain(self, tail: int = 20000) -> str:
        """For an assertion message: how it ended and the end of its output."""
        how = "timed out (its process group was killed)" if self.timed_out else "exited"
        return f"{how} with code {self.returncode}:\n{self.out[-tail:]}\n{self.err[-tail:]}"


async def run_group(
    args: Sequence[str],
    *,
    within: float,
    cwd: Path,
    env: dict[str, str] | None = None,
    merge: bool = False,
) -> Finished:
    """Run `args` until it exits or `within` seconds pass, capturing its output."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge else asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=2**24,
    )
    out, err = bytearray(), bytearray()

    async def drain(stream: asyncio.StreamReader | None, into: bytearray) -> None:
        while stream is not None and (chunk := await stream.read(65536)):
            into.extend(chunk)

    readers = asyncio.gather(drain(proc.stdout, out), drain(proc.stderr, err))
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(readers), within)
        await asyncio.wait_for(proc.wait(), 5)  # its output closed: it is exiting
    except TimeoutError:
        timed_out = True
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        readers.cancel()
        await asyncio.gather(readers, return_exceptions=True)
    return Finished(
        proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), timed_out
    )


async def json_line(proc: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
    """A long-running client's next stdout line, as JSON; on a timeout, kill it and
    fail with what it wrote to stderr."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), within)
    except TimeoutError:
        proc.kill()
        said = (await proc.stderr.read()).decode(errors="replace")
        pytest.fail(f"the node client said nothing for {within} s:\n{said}")
    assert raw, "the node client exited early"
    found: dict[str, Any] = json.loads(raw)
    return found
