"""The reference lung-nodule model measured on LIDC-IDRI-0001 by bench/accuracy.py, run as
CI runs it: a subprocess that writes its numbers as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.shared_data
@pytest.mark.timeout(600)
def test_reference_model_meets_its_targets_on_lidc_idri_0001(
    shared_data: Path, tmp_path: Path
) -> None:
    # Given the LIDC case and its four readers' annotations
    out = tmp_path / "accuracy.json"

    # When the benchmark runs the model on it
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "accuracy.py"),
            "--data",
            str(shared_data / "data" / "lidc-idri-0001"),
            "--json",
            str(out),
        ],
        cwd=REPO,
        env={**os.environ, "RADNODE_SHARED_DATA": str(shared_data)},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads(out.read_text())
    summary = report["summary"]
    shown = json.dumps(summary, indent=1)

    # Then the geometry it measured in agrees with the CT, and the reference SEG with both
    assert report["geometry"]["ct"]["ok"], report["geometry"]["ct"]
    assert report["geometry"]["xml"]["ok"], report["geometry"]["xml"]
    assert report["geometry"]["reference_seg"]["ok"], report["geometry"]["reference_seg"]
    # And the large nodule is found, measured within 20 % of the readers, overlaps the
    # reference, and few findings are false
    assert summary["large_nodule_found"], shown
    assert abs(summary["long_axis_difference_pct"]) <= 20.0, shown
    assert summary["dice_reference_same_slices"] >= 0.6, shown
    assert summary["false_positives"] <= 4, shown
    assert done.returncode == 0, done.stdout[-3000:]
