"""`radnode demo`: the whole node on a synthetic chest CT, with no download.

Makes a chest phantom with nodules of known size, starts a node on a free port with
a route to the reference model, sends the phantom over DICOM as a PACS would, waits
for the result and prints the findings beside the phantom's truth.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from node.config import NodeConfig
from node.domain import JobState
from node.export import Target, echo, send_files
from node.store import InstanceIndex, JobQueue
from node.store.results import load_result
from node.synthetic.phantom import PhantomTruth, write_chest_phantom

DEMO_AE = "DEMO-PACS"
WAIT_SECONDS = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(workdir: Path, port: int) -> dict[str, Any]:
    """A node configuration for the demo: loopback only, short timers, one route."""
    return {
        "node": {"ae_title": "RADNODE", "host": "127.0.0.1", "port": port},
        "api": {"enabled": False},  # the demo needs no HTTP (and no port of its own)
        "storage": {"root": str(workdir / "store"), "min_free_mb": 64},
        "sources": [{"name": "demo-pacs", "ae_title": DEMO_AE, "hosts": ["127.0.0.1"]}],
        "completion": {"series_quiet_seconds": 2, "study_quiet_seconds": 4},
        "routes": [
            {
                "name": "chest-ct",
                "from": ["demo-pacs"],
                "when": {"modality": "CT"},
                "model": "lung-nodules",
            }
        ],
        "inference": {"workers": 1},
        "logging": {"level": "info", "format": "json"},
    }


def demo(workdir: Path | None) -> int:
    """Run the demo; return 0 when the node produced a result."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="radnode-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"radnode demo in {workdir}")
    started = time.perf_counter()
    truth = write_chest_phantom(workdir / "phantom")
    assert truth.series is not None  # write_chest_phantom always records what it wrote
    print(
        f"1. made a synthetic chest CT: {len(truth.series.paths)} slices, "
        f"{len(truth.nodules)} nodules ({time.perf_counter() - started:.1f} s)"
    )
    port = _free_port()
    config_path = workdir / "radnode.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(workdir, port), sort_keys=False))
    config = NodeConfig.model_validate(yaml.safe_load(config_path.read_text()))
    log_path = workdir / "node.log"
    with log_path.open("wb") as log_file:
        node = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            return _drive(workdir, config, truth, port, node, log_path)
        finally:
            node.terminate()
            node.wait(30)


def _drive(
    workdir: Path,
    config: NodeConfig,
    truth: PhantomTruth,
    port: int,
    node: subprocess.Popen[bytes],
    log_path: Path,
) -> int:
    target = Target("RADNODE", "127.0.0.1", port)
    deadline = time.monotonic() + 60
    while not echo(target, DEMO_AE, timeout=2).ok:
        if node.poll() is not None or time.monotonic() > deadline:
            print(f"the node did not start; see {log_path}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(f"2. started a node: RADNODE on 127.0.0.1:{port}, log in {log_path}")
    assert truth.series is not None
    report = send_files(list(truth.series.paths), target, DEMO_AE, associations=2)
    if report.failures:
        print(f"sending failed: {report.failures[0][1]}", file=sys.stderr)
        return 1
    print(f"3. sent it as {DEMO_AE} over DICOM: {report.sent} images in {report.seconds:.1f} s")
    print("4. waiting for the series to complete and the model to run ...")
    index = InstanceIndex(config.storage.resolved_index_url())
    queue = JobQueue(index)
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        while True:
            jobs = queue.recent()
            done = [j for j in jobs if j.state not in {JobState.PENDING, JobState.RUNNING}]
            if done:
                job = done[0]
                break
            if node.poll() is not None or time.monotonic() > deadline:
                print(f"no result in time; see {log_path}", file=sys.stderr)
                return 1
            time.sleep(1.0)
    finally:
        index.close()
    if job.state != JobState.ENCODED or job.result_relpath is None:
        print(f"the job ended {job.state}: {job.reason}", file=sys.stderr)
        return 1
    result = load_result(config.storage.root, job.result_relpath)
    timings = result.meta["timings"]
    print(
        f"5. {result.meta['model']} {result.meta['model_version']} ran on "
        f"{result.meta['provider']} in {sum(timings.values()):.1f} s; job {job.id}\n"
    )
    print(_comparison(result.findings, truth))
    print(f"\nfindings: {result.folder / 'findings.json'}")
    outputs = result.meta.get("outputs", [])
    if outputs:
        names = ", ".join(f"{o['kind']} ({o['file']})" for o in outputs)
        print(f"DICOM results, as a PACS would receive them: {names}")
        print(f"  in {result.folder / 'dicom'}")
    print("AI-generated, unverified; not for clinical use.")
    return 0


def _comparison(findings: list[dict[str, Any]], truth: PhantomTruth) -> str:
    """Each phantom nodule beside the finding that matches it, then the extra findings."""
    lines = [
        f"{'phantom nodule':<28} {'found':<6} {'score':>5} {'long mm':>7} {'volume mm3':>18}",
    ]
    used: set[int] = set()
    for nodule in truth.nodules:
        match = None
        for n, f in enumerate(findings):
            if math.dist(f["centroid_mm"], nodule.center_mm) <= max(5.0, nodule.diameter_mm / 2):
                match = n
                break
        x, y, z = nodule.center_mm
        where = f"{nodule.diameter_mm:>4.0f} mm at ({x:.0f}, {y:.0f}, {z:.0f})"
        if match is None:
            lines.append(f"{where:<28} {'no':<6}")
            continue
        used.add(match)
        f = findings[match]
        volumes = f"{f['volume_mm3']:.0f} / {nodule.volume_mm3:.0f}"
        lines.append(
            f"{where:<28} {'yes':<6} {f['score']:>5.2f} {f['long_axis_mm']:>7.1f} {volumes:>18}"
        )
    extra = [f for n, f in enumerate(findings) if n not in used]
    lines.append(f"(volume: measured / drawn)  other findings: {len(extra)}")
    for f in extra:
        x, y, z = f["centroid_mm"]
        lines.append(
            f"  extra: {f['long_axis_mm']:.1f} mm at ({x:.0f}, {y:.0f}, {z:.0f}), "
            f"score {f['score']:.2f}"
        )
    return "\n".join(lines)
