"""Encryption at rest, as a hospital runs it: a chest CT received over DICOM, the
model run, the results delivered to the PACS, and not one file on the node's disk
in the clear; after the index is lost, the sealed files are indexed again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from node.store.sealed import MAGIC
from node.synthetic.phantom import write_chest_phantom
from tests.helpers import NodeProcess, run_tool, storescu_args
from tests.orthanc import Orthanc
from tests.results_helpers import SMALL

NodeFactory = Callable[..., NodeProcess]
CLEAR_MARKS = (b"DICM", b"SYNTHETIC^PATIENT", b"SYN-0001", b'"outputs"')


def test_nothing_the_node_keeps_is_in_the_clear(node_factory: NodeFactory, tmp_path: Path) -> None:
    # Given a node with a key for encryption at rest, sending results to the PACS
    key = tmp_path / "at-rest.key"
    key.write_bytes(bytes(range(64)))
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        node = node_factory(
            storage={"encryption_key_file": str(key)},
            completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2},
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                           "port": pacs.dicom_port}],
            routes=[{"name": "chest", "from": ["dcmtk-store"], "when": {"modality": "CT"},
                     "model": "lung-nodules", "send_to": ["pacs"]}],
        )  # fmt: skip
        phantom = write_chest_phantom(tmp_path / "ct", SMALL)
        assert phantom.series is not None
        # When a chest CT arrives, the model runs and the results are delivered
        sent = run_tool(storescu_args(node, list(phantom.series.paths)), timeout=120)
        assert sent.returncode == 0, sent.stderr
        delivered = node.wait_for_event("delivered", 240, job_state="delivered")
        # Then the PACS has the results in the clear, read from sealed files
        # (the PACS held nothing before: all it has now are the results)
        assert delivered["objects"] >= 4 and len(pacs.get("/instances")) == delivered["objects"]
        # And every instance and result file on the node's disk is sealed
        kept = [
            p
            for p in node.root.rglob("*")
            if p.is_file() and p.name not in ("audit.jsonl",) and "index.sqlite3" not in p.name
        ]
        assert len([p for p in kept if p.suffix == ".dcm"]) >= SMALL.slices + 4
        for path in kept:
            data = path.read_bytes()
            assert data.startswith(MAGIC), path
            assert not any(mark in data for mark in CLEAR_MARKS), path
        # And `radnode send` pushes a sealed result folder by hand, opened with the key
        job_id = delivered["job_id"]
        again = subprocess.run(
            [sys.executable, "-m", "node", "send", str(node.root / "results" / job_id / "dicom"),
             "--to", f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--config", str(node.config_path)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert f"{delivered['objects']} sent" in again.stdout and "0 failed" in again.stdout
        # When the index is lost and the node starts again
        node.stop()
        for index_file in node.root.glob("index.sqlite3*"):
            index_file.unlink()
        node.start()
        # Then the sealed instances are indexed again from the files
        ready = node.wait_for_event("storage_ready", 30, reindexed=SMALL.slices)
        assert ready["unreadable"] == 0
    finally:
        pacs.stop()
