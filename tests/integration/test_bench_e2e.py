"""bench/e2e.py as CI runs it: LIDC-IDRI-0001 from Orthanc to the node and back once;
the benchmark must complete the loop and print its timeline and table (its timings
are for people to read, not for a test to assert)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_tool
from tests.orthanc import ORTHANC

REPO = Path(__file__).resolve().parents[2]
STEPS = ("last_instance_received", "series_complete", "job_claimed", "job_inferred",
         "job_encoded", "job_delivering", "delivered", "job_delivered")  # fmt: skip


@pytest.mark.shared_data
@pytest.mark.timeout(600)
def test_the_end_to_end_benchmark_runs_the_loop_and_prints_its_table(shared_data: Path) -> None:
    require_tool(ORTHANC)
    # When the benchmark pushes the LIDC case from Orthanc through a fresh node
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "e2e.py"), "--repeat", "1"],
        cwd=REPO,
        env={**os.environ, "RADNODE_SHARED_DATA": str(shared_data)},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # Then the timeline shows every step in order, the series complete by Orthanc's count
    steps = [m[1] for line in lines if (m := re.match(r"\s+\+.*s\)\s+(\w+)", line))]
    assert [s for s in steps if s in STEPS] == list(STEPS)
    assert any("series_complete" in line and "C-FIND" in line for line in lines)
    # And the table has its row, with the latency split into model and the rest
    [row] = [line for line in lines if line.startswith("| 1 |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    latency, model, rest = (float(cells[i].removesuffix(" s")) for i in (2, 3, 4))
    assert latency > model > 0 and rest == pytest.approx(latency - model, abs=0.011)
    assert json.loads(lines[-1])["overhead_seconds"][0] == pytest.approx(rest, abs=0.006)
