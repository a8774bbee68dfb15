"""End-to-end latency: LIDC-IDRI-0001 from Orthanc to the node and back.

Orthanc (the PACS) holds the case and sends it to the node with its REST call
/modalities/{id}/store. The node asks Orthanc (C-FIND) how many instances the
series has, so that it is complete once they are all here; it then runs the lung
model, encodes SEG, SR and the fallbacks and sends them back to Orthanc. The
benchmark prints each job's timeline, and the latency from the last instance
received to the last result stored in Orthanc (the moment Orthanc confirmed the
last C-STORE: it answers only once the object is stored), with the same latency
minus the model's own time (networks and post-processing, as `radnode run` would
spend on the same volume). Target for the latter: under 3 s.

Each round starts a fresh node (empty store) against the same Orthanc.

Usage:
    RADNODE_SHARED_DATA=../shared .venv/bin/python bench/e2e.py [--repeat N]

Needs Orthanc (/usr/sbin/Orthanc). Exits 2 when the data or a tool is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # python bench/e2e.py: the tests' Orthanc and node helpers
    sys.path.insert(0, str(REPO))

from bench import lidc  # noqa: E402
from node.config import NodeConfig  # noqa: E402
from node.store import DeliveryQueue, JobQueue  # noqa: E402
from tests.helpers import NodeProcess, free_port  # noqa: E402
from tests.orthanc import ORTHANC, Orthanc  # noqa: E402

TARGET_SECONDS = 3.0
# The model's own time: what it spends on the volume once loaded (not the load).
NOT_MODEL = ("load",)


def node_settings(work: Path, port: int, pacs: Orthanc) -> dict[str, Any]:
    """A node as a hospital would set it up for this PACS."""
    return {
        "node": {"ae_title": "RADNODE", "host": "127.0.0.1", "port": port},
        "api": {"port": free_port()},
        "storage": {"root": str(work / "store"), "min_free_mb": 64},
        "sources": [
            {
                "name": "pacs",
                "ae_title": pacs.aet,
                "hosts": ["127.0.0.1"],
                "completeness_query": {"host": "127.0.0.1", "port": pacs.dicom_port},
            }
        ],
        "destinations": [
            {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
        ],
        "completion": {"series_quiet_seconds": 30, "study_quiet_seconds": 120},
        "routes": [
            {
                "name": "chest-ct",
                "from": ["pacs"],
                "when": {"modality": "CT", "min_slices": 30},
                "model": "lung-nodules",
                "send_to": ["pacs"],
            }
        ],
        "inference": {"workers": 1},
        "logging": {"level": "info", "format": "json"},
    }


def one_round(work: Path, pacs: Orthanc, study_id: str, port: int) -> dict[str, Any]:
    """Send the study once to a fresh node; return its timeline and the latencies."""
    work.mkdir()
    settings = node_settings(work, port, pacs)
    node = NodeProcess(work, settings)
    node.start(timeout=120)
    try:
        node.wait_for_event("worker_ready", 120)
        pacs.send_study(study_id, "radnode")
        created = node.wait_for_event("job_created", 120)
        job_id = str(created["job_id"])
        node.wait_for_event("delivered", 600, job_id=job_id, job_state="delivered")
    finally:
        node.stop()
    from node.cli.serve import open_store

    store = open_store(NodeConfig.model_validate(settings))
    try:
        story = JobQueue(store.index).timeline(job_id)
        [delivery] = DeliveryQueue(store.index).for_job(job_id)
    finally:
        store.close()
    at = {event["kind"]: float(event["at"]) for event in story}  # last of each kind
    inferred = next(e for e in story if e["kind"] == "job_inferred")
    timings: dict[str, float] = inferred["detail"]["timings"]
    model = sum(v for k, v in timings.items() if k not in NOT_MODEL)
    latency = at["delivered"] - at["last_instance_received"]
    delivered = next(e for e in story if e["kind"] == "delivered")
    return {
        "job_id": job_id,
        "story": story,
        "timings": timings,
        "receive_seconds": at["last_instance_received"] - at["first_instance_received"],
        "latency": latency,
        "model": model,
        "overhead": latency - model,
        "objects": delivered["detail"]["objects"],
        "confirmed": len(delivery.confirmed),
    }


def print_timeline(result: dict[str, Any]) -> None:
    story = result["story"]
    start = story[0]["at"]
    previous = start
    print(f"\njob {result['job_id']}")
    for event in story:
        at = float(event["at"])
        detail = event.get("detail") or {}
        note = ""
        if event["kind"] == "job_inferred":
            note = ", ".join(f"{k} {v:.2f} s" for k, v in detail.get("timings", {}).items())
        elif event["kind"] == "series_complete":
            note = str(detail.get("by", "quiet timer"))
        elif event["kind"] == "delivered":
            note = f"{detail.get('objects')} objects in {detail.get('seconds')} s"
        print(f"  +{at - start:7.2f} s  ({at - previous:+6.2f} s)  {event['kind']:<24} {note}")
        previous = at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", help="the LIDC-IDRI-0001 folder (default: from RADNODE_SHARED_DATA)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds, each with a fresh node")
    args = parser.parse_args()
    try:
        case = lidc.case_folder(args.data)
    except lidc.DataMissing as exc:
        print(f"bench/e2e.py: {exc}", file=sys.stderr)
        return 2
    if not Path(ORTHANC).exists():
        print(
            "bench/e2e.py: Orthanc is missing: install the Debian package orthanc", file=sys.stderr
        )
        return 2
    files = sorted((case / "ct").glob("*.dcm"))
    results = []
    with tempfile.TemporaryDirectory(prefix="radnode-e2e-") as tmp:
        work = Path(tmp)
        port = free_port()
        pacs = Orthanc(work / "orthanc", modalities={"radnode": ["RADNODE", "127.0.0.1", port]})
        pacs.start()
        try:
            study_id = pacs.upload(files)
            for n in range(args.repeat):
                result = one_round(work / f"node{n}", pacs, study_id, port)
                print_timeline(result)
                results.append(result)
        finally:
            pacs.stop()
    print(f"\nLIDC-IDRI-0001: {len(files)} slices from Orthanc to the node and back, "
          f"{results[0]['objects']} result objects; {len(results)} round(s)")  # fmt: skip
    print("\n| round | receive | last instance -> last result in Orthanc | model | "
          "latency - model | target |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n, r in enumerate(results, start=1):
        ok = "met" if r["overhead"] < TARGET_SECONDS else "NOT met"
        print(
            f"| {n} | {r['receive_seconds']:.2f} s | {r['latency']:.2f} s | {r['model']:.2f} s | "
            f"{r['overhead']:.2f} s | < {TARGET_SECONDS:g} s: {ok} |"
        )
    if len(results) > 1:
        overheads = [r["overhead"] for r in results]
        print(f"\nlatency - model: median {statistics.median(overheads):.2f} s, "
              f"range {min(overheads):.2f}-{max(overheads):.2f} s")  # fmt: skip
    print(json.dumps({"overhead_seconds": [round(r["overhead"], 3) for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
