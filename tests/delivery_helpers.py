"""An encoded job in a real store, without running a model: the small phantom is
received, routed and "inferred" (its drawn nodules are the findings), and its
results are encoded and kept as a worker keeps them. Delivery tests start here."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from node.cli.serve import open_store
from node.config import NodeConfig
from node.domain import Job, JobState, RouteMatch
from node.results.encode import OUTPUTS_DIR, Output, encode, write_outputs
from node.store import InstanceStore, JobQueue, job_id_for, read_header
from node.store.files import RESULTS_DIR
from node.store.results import save_result
from node.synthetic import write_ct_series
from tests.results_helpers import make_encoding_input

MODEL = "lung-nodules"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


@dataclass
class EncodedJob:
    job: Job
    outputs: list[Output]
    study_uid: str
    source_series_uid: str
    source_files: list[Path]

    def sop_uids(self, *kinds: str) -> set[str]:
        return {str(o.dataset.SOPInstanceUID) for o in self.outputs if not kinds or o.kind in kinds}


def make_store(config: NodeConfig) -> InstanceStore:
    return open_store(config)


def claimed_job(
    store: InstanceStore,
    folder: Path,
    send_to: tuple[str, ...],
    *,
    priority: int = 0,
    now: float | None = None,
    owner: str = "worker",
) -> Job:
    """A 3-slice series received, complete and routed to `send_to`; its job claimed by
    `owner` (for tests of what happens after the model, without one)."""
    now = time.time() if now is None else now
    series = write_ct_series(folder, slices=3)
    for path in series.paths:
        data = path.read_bytes()
        store.store_instance(read_header(data), data, source="pacs")
    store.index.complete_quiet_series(quiet_before=time.time() + 1, now=now)
    queue = JobQueue(store.index)
    found = queue.series_facts(series.series_uid)
    assert found is not None
    match = RouteMatch(route="chest", model=MODEL, priority=priority, send_to=send_to)
    [job] = queue.record_routing(found[0], [match], now)
    while (claimed := queue.claim(owner, 300, now, 3)) is not None and claimed.id != job.id:
        pass  # jobs routed earlier in the test are claimed (and left) on the way
    assert claimed is not None
    return claimed


def encoded_job(
    store: InstanceStore,
    phantom_dir: Path,
    send_to: tuple[str, ...],
    *,
    now: float | None = None,
    kinds: tuple[str, ...] = ("seg", "sr", "sc", "kos", "pdf"),
) -> EncodedJob:
    """Receive the small phantom, route it to `send_to`, and keep encoded results."""
    now = time.time() if now is None else now
    inp = make_encoding_input(phantom_dir)
    files = sorted(phantom_dir.rglob("*.dcm"))
    for path in files:
        data = path.read_bytes()
        store.store_instance(read_header(data), data, source="pacs", calling_ae="PACS")
    store.index.complete_quiet_series(quiet_before=time.time() + 1, now=now)
    queue = JobQueue(store.index)
    found = queue.series_facts(inp.volume.series_uid)
    assert found is not None
    facts, _ = found
    match = RouteMatch(route="chest", model=MODEL, priority=0, send_to=send_to)
    [job] = queue.record_routing(facts, [match], now)
    assert job.id == job_id_for(inp.volume.series_uid, 1, MODEL)
    claimed = queue.claim("test-worker", 300, now, 3)
    assert claimed is not None and claimed.id == job.id
    inp = replace(inp, job_id=job.id)
    outputs, _ = encode(inp, kinds)  # type: ignore[arg-type]
    relpath = f"{RESULTS_DIR}/{job.id}"
    write_outputs(store.root / relpath / OUTPUTS_DIR, outputs)
    meta: dict[str, Any] = {"outputs": [o.describe() for o in outputs]}
    save_result(store.root, job.id, findings=[], masks={}, labels={}, meta=meta)
    assert queue.finish(job.id, "test-worker", JobState.ENCODED, now, result_relpath=relpath)
    final = queue.get(job.id)
    assert final is not None
    return EncodedJob(final, outputs, inp.volume.study_uid, inp.volume.series_uid, files)
