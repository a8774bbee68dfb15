"""The whole loop with a real PACS: Orthanc sends a chest CT to the node (its REST
call /modalities/{id}/store), the node runs the lung model and sends SEG, SR and the
fallbacks back into the same study. Also: the PACS down for a minute during
delivery, and the node killed with kill -9 during inference and during delivery;
each time the results arrive once, with no manual action."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from node.synthetic.phantom import PhantomTruth, write_chest_phantom
from tests.helpers import NodeProcess, free_port
from tests.orthanc import Orthanc
from tests.results_helpers import SMALL

NodeFactory = Callable[..., NodeProcess]
ROUTE = {"name": "chest-ct", "from": ["pacs"], "when": {"modality": "CT", "min_slices": 30},
         "model": "lung-nodules", "send_to": ["pacs"], "priority": 5}  # fmt: skip
FAST = {"series_quiet_seconds": 1, "study_quiet_seconds": 2}
PHI = ("SYNTHETIC^PATIENT", "SYN-0001", "SYNACC1", "19500101")
METRICS_TOKEN = "metrics-" + "m" * 24
QUICK_RETRIES = {"retry_base_seconds": 1, "retry_max_seconds": 4, "max_age_hours": 1}
# Each result the node sends takes the PACS about 2 s to store: the node can be
# killed while it is half-way through a delivery.
SLOW_FROM_NODE = """
function ReceivedInstanceFilter(dicom, origin, info)
  if origin["RequestOrigin"] == "DicomProtocol" and origin["RemoteAet"] == "RADNODE" then
    local started = os.clock()
    while os.clock() - started < 2.0 do end
  end
  return true
end
"""


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomTruth:
    return write_chest_phantom(tmp_path_factory.mktemp("phantom"), SMALL)


def wait_until(what: str, check: Callable[[], Any], timeout: float, node: NodeProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout} s:\n{node.log_text()[-4000:]}")


class Loop:
    """A node and an Orthanc that know each other, and the phantom in the PACS."""

    def __init__(self, node: NodeProcess, pacs: Orthanc, study_uid: str, study_id: str) -> None:
        self.node, self.pacs = node, pacs
        self.study_uid, self.study_id = study_uid, study_id

    def send_study(self) -> None:
        self.pacs.send_study(self.study_id, "radnode")

    def job_id(self, timeout: float = 60) -> str:
        created = self.node.wait_for_event("job_created", timeout)
        return str(created["job_id"])

    def expected(self, job_id: str) -> dict[str, str]:
        """SOP instance UID -> kind of every object the job encoded."""
        meta = json.loads((self.node.root / "results" / job_id / "result.json").read_text())
        return {o["sop_instance_uid"]: o["kind"] for o in meta["outputs"]}

    def results_in_pacs(self, job_id: str) -> list[dict[str, Any]]:
        wanted = self.expected(job_id)
        return [
            i for i in self.pacs.instances_of_study(self.study_uid) if i["SOPInstanceUID"] in wanted
        ]

    def radnode(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node", *args, "--config", str(self.node.config_path)],
            capture_output=True, text=True, timeout=60, check=False, cwd=self.node.workdir,
        )  # fmt: skip


@pytest.fixture
def loop_factory(
    node_factory: NodeFactory, phantom: PhantomTruth, tmp_path: Path
) -> Iterator[Callable[..., Loop]]:
    pacs_list: list[Orthanc] = []

    def make(
        lua: str | None = None,
        completion: dict[str, float] = FAST,
        ask_pacs: bool = False,
        offline_too: bool = False,
    ) -> Loop:
        node = node_factory(
            start=False,
            sources=[{"name": "pacs", "ae_title": "ORTHANC", "hosts": ["127.0.0.1"]}],
            completion=completion,
            routes=[{**ROUTE}],  # a copy: a test may change send_to
            delivery=QUICK_RETRIES,
            api={
                "host": "127.0.0.1",
                "port": free_port(),
                "tokens": [
                    {
                        "name": "prometheus",
                        "scopes": ["read"],
                        "sha256": hashlib.sha256(METRICS_TOKEN.encode()).hexdigest(),
                    }
                ],
            },
            inference={"workers": 1, "lease_seconds": 10},
        )
        pacs = Orthanc(
            tmp_path / "orthanc",
            modalities={"radnode": ["RADNODE", "127.0.0.1", node.port]},
            lua=lua,
        )
        pacs_list.append(pacs)
        pacs.start()
        if ask_pacs:
            node.config["sources"][0]["completeness_query"] = {
                "host": "127.0.0.1", "port": pacs.dicom_port, "interval_seconds": 1,
            }  # fmt: skip
        node.config["destinations"] = [
            {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs.dicom_port}
        ]
        if offline_too:  # a second destination that nothing answers for
            node.config["destinations"].append(
                {"name": "offline", "ae_title": "GONE", "host": "127.0.0.1", "port": free_port()}
            )
            node.config["routes"][0]["send_to"] = ["offline", "pacs"]
        node.config_path.write_text(json.dumps(node.config))  # JSON is YAML
        node.start()
        assert phantom.series is not None
        study_id = pacs.upload(list(phantom.series.paths))
        study_uid = pacs.get(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]
        return Loop(node, pacs, study_uid, study_id)

    yield make
    for pacs in pacs_list:
        pacs.stop()


def test_a_study_sent_by_the_pacs_comes_back_with_its_results(
    loop_factory: Callable[..., Loop],
) -> None:
    # Given a node routing chest CTs from the PACS to the lung model and back to the
    # PACS, and to a second destination that is offline
    loop = loop_factory(offline_too=True)
    # When the PACS sends the study to the node
    loop.send_study()
    job_id = loop.job_id()
    # Then the results are delivered to the PACS while the offline one is retried
    loop.node.wait_for_event("delivered", 180, job_id=job_id, destination="pacs")
    retry = loop.node.find_event("delivery_retry", job_id=job_id, destination="offline")
    assert retry is not None and "connection refused" in retry["reason"]
    # And the PACS holds every result in the source study: SEG, SR, key images, KOS
    # and the summary, with the node's UIDs
    expected = loop.expected(job_id)
    assert set(expected.values()) == {"seg", "sr", "sc", "kos", "pdf"}
    stored = loop.results_in_pacs(job_id)
    assert sorted(i["SOPInstanceUID"] for i in stored) == sorted(expected)
    # And they reference the source series the PACS sent
    source_series = {
        s["MainDicomTags"]["SeriesInstanceUID"]
        for s in loop.pacs.get(f"/studies/{loop.study_id}/series?expand")
        if s["MainDicomTags"].get("Modality") == "CT"
    }
    by_kind = {expected[i["SOPInstanceUID"]]: i for i in stored}
    seg = pydicom.dcmread(io.BytesIO(loop.pacs.instance_file(by_kind["seg"]["ID"])))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID in source_series
    kos = pydicom.dcmread(io.BytesIO(loop.pacs.instance_file(by_kind["kos"]["ID"])))
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {item.SeriesInstanceUID for item in evidence} <= source_series
    # And the audit trail records what left the node, and where to
    trail = (loop.node.root / "audit.jsonl").read_text()
    delivered = [json.loads(line) for line in trail.splitlines() if "results_delivered" in line]
    assert [(e["job_id"], e["destination"], e["objects"]) for e in delivered] == [
        (job_id, "pacs", len(expected))
    ]
    # And no log, trail or metric of the whole loop holds the patient's name, ID, birth
    # date or accession number
    metrics = requests.get(
        f"http://127.0.0.1:{loop.node.config['api']['port']}/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=30,
    )
    assert metrics.status_code == 200
    for value in PHI:
        for text in (loop.node.log_text(), trail, metrics.text):
            assert value not in text
    # And `radnode jobs JOB` tells the story up to the delivery, and what is pending
    shown = loop.radnode("jobs", job_id)
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id}  delivering" in shown.stdout
    assert "to pacs: delivered" in shown.stdout
    assert "to offline: pending" in shown.stdout and "connection refused" in shown.stdout
    for step in ("series_complete", "job_inferred", "job_encoded", "job_delivering", "delivered"):
        assert step in shown.stdout


def test_results_wait_out_a_pacs_outage_of_a_minute(loop_factory: Callable[..., Loop]) -> None:
    # Given a node and a PACS that sent it a study and then went down
    loop = loop_factory()
    loop.send_study()
    loop.pacs.stop()
    down_at = time.monotonic()
    job_id = loop.job_id()
    # When the node tries to deliver meanwhile
    retry = loop.node.wait_for_event("delivery_retry", 180, job_id=job_id)
    # Then it says why and keeps trying
    assert "connection refused" in retry["reason"]
    # When the PACS comes back a minute later
    time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
    loop.pacs.start()
    # Then the results arrive without anyone doing anything
    loop.node.wait_for_event("delivered", 60, job_id=job_id, job_state="delivered")
    assert len(loop.results_in_pacs(job_id)) == len(loop.expected(job_id))
    retries = [e for e in loop.node.log_events() if e.get("event") == "delivery_retry"]
    assert len(retries) >= 3  # it kept at it through the outage, with backoff


def test_kill_9_during_inference_and_during_delivery_leaves_one_copy_of_each_result(
    loop_factory: Callable[..., Loop],
) -> None:
    # Given a PACS that takes about 2 s to store each result
    loop = loop_factory(lua=SLOW_FROM_NODE)
    loop.send_study()
    job_id = loop.job_id()
    # When the node is killed while the model runs
    loop.node.wait_for_event("job_claimed", 60, job_id=job_id)
    loop.node.kill9()
    assert loop.node.find_event("job_inferred", job_id=job_id) is None, "killed too late"
    # And started again
    loop.node.start()
    # Then the job runs again at once, and delivery starts
    loop.node.wait_for_event("jobs_resumed", 30)
    wait_until(
        "a first result in the PACS",
        lambda: (
            (loop.node.root / "results" / job_id / "result.json").exists()
            and loop.results_in_pacs(job_id)
        ),
        240,
        loop.node,
    )
    # When the node is killed again half-way through the delivery
    loop.node.kill9()
    in_pacs = len(loop.results_in_pacs(job_id))
    expected = loop.expected(job_id)
    assert 0 < in_pacs < len(expected), "killed outside the delivery"
    # And started again
    loop.node.start()
    # Then the delivery resumes and completes
    loop.node.wait_for_event("delivered", 120, job_id=job_id, job_state="delivered")
    assert loop.node.find_event("deliveries_resumed") is not None
    # And the PACS holds exactly one copy of each result, with the same UIDs
    stored = loop.results_in_pacs(job_id)
    assert sorted(i["SOPInstanceUID"] for i in stored) == sorted(expected)


def test_a_series_is_complete_as_soon_as_the_pacs_count_is_reached(
    loop_factory: Callable[..., Loop],
) -> None:
    # Given a node that asks the PACS (C-FIND) how many instances a series has, with a
    # quiet timer of five minutes
    loop = loop_factory(completion={"series_quiet_seconds": 300, "study_quiet_seconds": 600},
                        ask_pacs=True)  # fmt: skip
    # When the PACS sends the 40-slice study
    started = time.monotonic()
    loop.send_study()
    # Then the series is complete within seconds, by the count, not by the timer
    complete = loop.node.wait_for_event("series_complete", 30)
    assert complete["by"] == "c-find"
    assert complete["expected"] == complete["instances"] == SMALL.slices
    assert time.monotonic() - started < 30
    # And the job's timeline says how the series was found complete
    shown = loop.radnode("jobs", loop.job_id())
    assert "count from the sender (C-FIND)" in shown.stdout, shown.stdout + shown.stderr
