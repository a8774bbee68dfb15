"""`radnode demo`, as a newcomer runs it on a fresh machine: nothing to download."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_demo_finds_the_phantom_nodules_through_a_running_node(tmp_path: Path) -> None:
    # When a newcomer runs the demo
    done = subprocess.run(
        [sys.executable, "-m", "node", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    # Then it made a phantom, ran a node, sent the phantom over DICOM and reports the
    # model's findings beside the phantom's nodules: the 20, 12 and 8 mm ones found
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "sent it as DEMO-PACS over DICOM: 120 images" in out
    for size in ("20 mm", "12 mm", " 8 mm"):
        line = next(line for line in out.splitlines() if line.strip().startswith(size.strip()))
        assert " yes " in line, line
    assert "not for clinical use" in out
    # And the node it started has stopped, and its log holds no patient data
    log = (tmp_path / "demo" / "node.log").read_text()
    assert "node_stopped" in log
    assert "SYNTHETIC^PATIENT" not in log and "SYN-0001" not in log
