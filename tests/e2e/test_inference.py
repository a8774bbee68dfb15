"""The node as a hospital runs it: series arrive over DICOM, routes pick the model,
workers run it and keep the result; bad series are rejected with a reason, and a
worker killed mid-job loses its lease and the job runs again."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from node.synthetic import write_ct_series
from node.synthetic.phantom import PhantomSpec, PhantomTruth, write_chest_phantom
from tests.helpers import NodeProcess, run_tool, storescu_args

NodeFactory = Callable[..., NodeProcess]
PHI = ("SYNTHETIC^PATIENT", "SYN-0001", "SYNACC1", "19500101")
ROUTE = {"name": "chest-ct", "from": ["dcmtk-store"], "when": {"modality": "CT"},
         "model": "lung-nodules", "priority": 5}  # fmt: skip
FAST = {"series_quiet_seconds": 1, "study_quiet_seconds": 2}


def radnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def send(node: NodeProcess, paths: tuple[Path, ...]) -> None:
    done = run_tool(storescu_args(node, list(paths)), timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomTruth:
    return write_chest_phantom(tmp_path_factory.mktemp("phantom"), PhantomSpec())


def test_a_chest_ct_is_routed_inferred_and_its_results_encoded(
    node_factory: NodeFactory, phantom: PhantomTruth
) -> None:
    # Given a node with a route that sends chest CTs from the PACS to the lung model
    node = node_factory(routes=[ROUTE], completion=FAST, inference={"workers": 1})
    assert phantom.series is not None
    # When the PACS sends a chest CT with nodules of known size
    send(node, phantom.series.paths)
    # Then the series completes, a job is created and a worker runs the model on it
    created = node.wait_for_event("job_created", 60, route="chest-ct")
    inferred = node.wait_for_event("job_inferred", 300, job_id=created["job_id"])
    assert inferred["provider"] == "CPUExecutionProvider"
    ready = node.wait_for_event("model_session_ready", 5)
    assert ready["provider"] == "CPUExecutionProvider"
    # And the results are encoded as DICOM: SEG, SR, key images, KOS and the summary
    encoded = node.wait_for_event("job_encoded", 60, job_id=created["job_id"])
    assert set(encoded["outputs"]) == {"seg", "sr", "sc", "kos", "pdf"}
    # And the result sits in the store: the findings match the drawn nodules of 8 mm
    # and more, each measured within 25% of its drawn diameter
    result = node.root / "results" / created["job_id"]
    findings = json.loads((result / "findings.json").read_text())
    for nodule in (n for n in phantom.nodules if n.diameter_mm >= 8):
        near = [
            f
            for f in findings
            if math.dist(f["centroid_mm"], nodule.center_mm) <= nodule.diameter_mm / 2
        ]
        assert near, f"nodule of {nodule.diameter_mm} mm at {nodule.center_mm} not found"
        assert abs(near[0]["long_axis_mm"] - nodule.diameter_mm) <= 0.25 * nodule.diameter_mm
    meta = json.loads((result / "result.json").read_text())
    assert meta["series_uid"] == phantom.series.series_uid
    assert len(meta["sop_instance_uids"]) == len(phantom.series.paths)
    # And each encoded object is on disk, named in result.json
    assert {o["kind"] for o in meta["outputs"]} == {"seg", "sr", "sc", "kos", "pdf"}
    for output in meta["outputs"]:
        assert (result / "dicom" / output["file"]).is_file(), output
    # And `radnode jobs` shows the job as encoded
    listed = radnode("jobs", "--config", str(node.config_path), "--state", "encoded")
    assert created["job_id"] in listed.stdout, listed.stdout + listed.stderr
    # And `radnode jobs JOB` tells its story in order, from the first instance received
    # to the encoded results, with the time of each step
    shown = radnode("jobs", "--config", str(node.config_path), created["job_id"][:8])
    assert shown.returncode == 0, shown.stderr
    steps = [
        "first_instance_received", "last_instance_received", "series_complete",
        "job_created", "job_claimed", "job_inferred", "job_encoded",
    ]  # fmt: skip
    positions = [shown.stdout.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), shown.stdout
    assert "lung_network" in shown.stdout  # the model's stage times are in the trace
    # And no patient data reached the log
    assert not [p for p in PHI if p in node.log_text()]


def test_a_series_the_model_cannot_use_is_rejected_with_its_reason(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    # Given a route that matches every CT, and a CT of 5 slices (the model needs 30)
    node = node_factory(routes=[ROUTE], completion=FAST, inference={"workers": 1})
    series = write_ct_series(tmp_path / "short", slices=5, rows=64, cols=64)
    # When it arrives
    send(node, series.paths)
    # Then its job is rejected, with the reason in the log and in `radnode jobs`
    rejected = node.wait_for_event("series_rejected", 120, series_uid=series.series_uid)
    assert "5 slices" in rejected["reason"] and "30" in rejected["reason"]
    listed = radnode("jobs", "--config", str(node.config_path), "--state", "rejected")
    assert "5 slices" in listed.stdout, listed.stdout + listed.stderr
    # And the node goes on serving: an echo still works
    echo = run_tool(["/usr/bin/echoscu", "-aet", "ECHOSCU", "-aec", "RADNODE", "127.0.0.1",
                     str(node.port)])  # fmt: skip
    assert echo.returncode == 0


def test_a_series_no_route_matches_creates_no_job(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    # Given a route for CT only from the PACS, and an instance sent by another source
    route = {**ROUTE, "when": {"modality": "MR"}}
    node = node_factory(routes=[route], completion=FAST, inference={"workers": 1})
    series = write_ct_series(tmp_path / "ct", slices=3, rows=32, cols=32)
    send(node, series.paths)
    # Then routing says why the route did not apply, and there is no job
    event = node.wait_for_event("series_not_routed", 60, series_uid=series.series_uid)
    assert "Modality CT" in event["reasons"]["chest-ct"]
    listed = radnode("jobs", "--config", str(node.config_path))
    assert listed.stdout.strip() == "no jobs"


def test_a_worker_killed_mid_job_loses_its_lease_and_the_job_runs_again(
    node_factory: NodeFactory, phantom: PhantomTruth
) -> None:
    # Given a node whose worker leases jobs for 10 s
    node = node_factory(
        routes=[ROUTE], completion=FAST, inference={"workers": 1, "lease_seconds": 10}
    )
    assert phantom.series is not None
    send(node, phantom.series.paths)
    claimed = node.wait_for_event("job_claimed", 60)
    # When the worker is killed with SIGKILL in the middle of the job
    os.kill(claimed["pid"], signal.SIGKILL)
    # Then the supervisor starts a new worker, which claims the job again once the
    # lease has expired, and finishes it on the second attempt
    node.wait_for_event("worker_process_died", 30)
    again = node.wait_for_event("job_claimed", 120, job_id=claimed["job_id"], attempt=2)
    assert again["pid"] != claimed["pid"]
    node.wait_for_event("job_encoded", 300, job_id=claimed["job_id"])
    listed = radnode("jobs", "--config", str(node.config_path), "--state", "encoded")
    assert claimed["job_id"] in listed.stdout
