"""The worker against a real store: a routed series is claimed, run and encoded for its
destinations; bad input is rejected once; a model's or the disk's failure is retried
with backoff until the attempts run out; a lost lease writes nothing.

The model is a fake pipeline with the real lung-nodules package (so the real input
checks apply) and one measured sphere as its finding; the real networks never run.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

import node.cli.work as work
from node.cli.serve import open_store
from node.cli.work import Worker, route_pending
from node.config import NodeConfig
from node.domain import Job, JobState
from node.domain.volume import Volume
from node.inference.measure import measure_finding
from node.inference.package import ModelPackage, ModelRegistry
from node.inference.pipelines import InferenceResult, Pipeline, RuntimeSettings
from node.results.context import ALL_OUTPUTS
from node.store import InstanceStore, JobQueue, read_header
from node.synthetic import write_ct_series

REPO = Path(__file__).resolve().parents[2]
MODEL = "lung-nodules"
START = 1_000_000.0  # the worker's clock at the start of every test
LEASE = 60.0
VIEWER_OUTPUTS = ["sc", "kos", "pdf"]  # a viewer that shows neither SEG nor SR


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakePipeline(Pipeline):
    """The real package's checks and metadata, a result the test controls, no networks.

    Each run calls `before(volume)` (which may raise), then returns one 8 mm sphere in
    the middle of the volume, measured as the real pipelines measure their findings.
    """

    def __init__(self, package: ModelPackage, before: Callable[[Volume], None] | None = None):
        # No super().__init__(): it would load the package's ONNX networks.
        self.package = package
        self.runtime = RuntimeSettings(providers=("cpu",))
        self.networks = {}
        self.before = before
        self.volumes: list[Volume] = []

    @property
    def provider(self) -> str:
        return "fake"

    def run(self, volume: Volume) -> InferenceResult:
        self.volumes.append(volume)
        if self.before is not None:
            self.before(volume)
        kk, jj, ii = np.indices(volume.shape, sparse=True)
        ck, cj, ci = (n // 2 for n in volume.shape)
        dz, dy, dx = volume.spacing
        sphere = ((kk - ck) * dz) ** 2 + ((jj - cj) * dy) ** 2 + ((ii - ci) * dx) ** 2 <= 4.0**2
        finding = measure_finding(volume, sphere, label="Nodule", tracking_id="nodule-1", score=0.8)
        assert finding is not None
        return InferenceResult(
            model=self.package.name,
            model_version=self.package.version,
            findings=[finding],
            segments={"Lung": np.zeros(volume.shape, dtype=bool)},
            findings_labels=sphere.astype(np.uint16),
            timings={"model": 0.01},
            provider=self.provider,
        )


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(REPO / "models")


@pytest.fixture(scope="module")
def chest_ct(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A CT series the lung model accepts: 30 slices of 256 x 256, 1.25 mm thick."""
    folder = tmp_path_factory.mktemp("chest-ct")
    series = write_ct_series(folder, slices=30, rows=256, cols=256, slice_thickness_mm=1.25)
    return [p.read_bytes() for p in series.paths]


@pytest.fixture(scope="module")
def short_ct(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """A CT series too short for the lung model: 5 slices."""
    folder = tmp_path_factory.mktemp("short-ct")
    series = write_ct_series(folder, slices=5, rows=256, cols=256, slice_thickness_mm=1.25)
    return [p.read_bytes() for p in series.paths]


def make_config(root: Path, **inference: Any) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "storage": {"root": str(root), "min_free_mb": 0},
            "destinations": [
                {
                    "name": "viewer",
                    "ae_title": "VIEWER",
                    "host": "127.0.0.1",
                    "port": 11113,
                    "outputs": VIEWER_OUTPUTS,
                },
                {
                    "name": "archive",
                    "ae_title": "ARCHIVE",
                    "host": "127.0.0.1",
                    "port": 11114,
                    "outputs": ["seg", "sr", "pdf"],
                    "fallback_outputs": ["kos"],
                },
            ],
            "routes": [
                {"name": "chest", "when": {"modality": "CT"}, "model": MODEL, "send_to": ["viewer"]}
            ],
            "inference": {
                "models_dir": str(REPO / "models"),
                "lease_seconds": LEASE,
                "max_attempts": 3,
                **inference,
            },
        }
    )


@pytest.fixture
def config(tmp_path: Path) -> NodeConfig:
    return make_config(tmp_path / "store")


@pytest.fixture
def store(config: NodeConfig) -> Iterator[InstanceStore]:
    opened = open_store(config)
    yield opened
    opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def worker(
    config: NodeConfig, store: InstanceStore, registry: ModelRegistry, clock: Clock
) -> Worker:
    made = Worker(config, store, registry, clock=clock)
    made._pipelines[MODEL] = FakePipeline(registry.get(MODEL))
    return made


def fake(worker: Worker) -> FakePipeline:
    pipeline = worker._pipelines[MODEL]
    assert isinstance(pipeline, FakePipeline)
    return pipeline


def receive_and_route(
    config: NodeConfig, store: InstanceStore, files: list[bytes], clock: Clock
) -> Job:
    """Store the files, let the series go quiet and route it; the one job it makes."""
    for data in files:
        store.store_instance(read_header(data), data, source="pacs", calling_ae="PACS1")
    store.index.complete_quiet_series(quiet_before=time.time() + 1, now=clock())
    queue = JobQueue(store.index)
    assert route_pending(config, store, queue, now=clock) == 1
    [job] = queue.recent()
    assert job.state is JobState.PENDING
    return job


def event_kinds(store: InstanceStore, job_id: str) -> list[str]:
    return [e["kind"] for e in JobQueue(store.index).timeline(job_id) if e["job_id"] == job_id]


def events_of(store: InstanceStore, job_id: str, kind: str) -> list[dict[str, Any]]:
    return [e["detail"] for e in store.index.events(kind) if e["job_id"] == job_id]


# -- the happy path ------------------------------------------------------------------


def test_a_routed_series_is_run_and_encoded_for_its_destination_only(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    chest_ct: list[bytes],
) -> None:
    # Given a 30-slice chest CT routed to the lung model for a viewer wanting sc, kos, pdf
    job = receive_and_route(config, store, chest_ct, clock)
    assert job.send_to == ("viewer",)
    # When the worker runs once
    done = worker.run_once()
    # Then the job was run on the whole series and ended encoded, pointing at its result
    assert done is not None and done.id == job.id
    assert (done.state, done.attempts, done.reason) == (JobState.ENCODED, 1, None)
    assert done.result_relpath == f"results/{job.id}"
    [volume] = fake(worker).volumes
    assert volume.shape == (30, 256, 256)
    folder = store.root / done.result_relpath
    meta = json.loads((folder / "result.json").read_text())
    # And the DICOM folder holds exactly the files result.json lists: the viewer's kinds
    listed = meta["outputs"]
    assert {o["kind"] for o in listed} == set(VIEWER_OUTPUTS)
    assert sorted(p.name for p in (folder / "dicom").iterdir()) == sorted(o["file"] for o in listed)
    assert not (folder / "dicom" / "seg.dcm").exists()
    assert not (folder / "dicom" / "sr.dcm").exists()
    for output in listed:
        ds = pydicom.dcmread(folder / "dicom" / output["file"], stop_before_pixels=True)
        assert str(ds.SOPInstanceUID) == output["sop_instance_uid"]
        assert str(ds.StudyInstanceUID) == volume.study_uid
    # And the metadata describes the source without patient data
    assert (meta["model"], meta["provider"]) == (MODEL, "fake")
    assert meta["series_uid"] == job.series_uid
    assert len(meta["sop_instance_uids"]) == 30
    assert "load" in meta["timings"]
    assert "SYNTHETIC" not in (folder / "result.json").read_text()
    # And findings.json holds the one finding
    findings = json.loads((folder / "findings.json").read_text())
    assert [f["tracking_id"] for f in findings] == ["nodule-1"]
    # And the events tell the story
    kinds = event_kinds(store, job.id)
    assert kinds[:4] == ["job_created", "job_claimed", "job_inferred", "job_encoded"]
    [encoded] = events_of(store, job.id, "job_encoded")
    assert (encoded["findings"], encoded["outputs"]) == (1, len(listed))
    # And there is nothing left to do
    assert worker.run_once() is None


def test_no_job_means_nothing_to_do(worker: Worker) -> None:
    # Given an empty store; when the worker looks for work, then it finds none
    assert worker.run_once() is None
    assert fake(worker).volumes == []


# -- bad input -----------------------------------------------------------------------


def test_a_series_the_model_cannot_use_is_rejected_and_never_retried(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    short_ct: list[bytes],
) -> None:
    # Given a 5-slice CT (the route lets it through; the model needs 30 slices)
    job = receive_and_route(config, store, short_ct, clock)
    # When the worker runs it
    done = worker.run_once()
    # Then it is rejected with a reason naming the slice count, the model never ran
    assert done is not None and done.state is JobState.REJECTED
    assert done.reason == "5 slices; the model needs at least 30"
    assert fake(worker).volumes == []
    assert not (store.root / "results" / job.id).exists()
    assert events_of(store, job.id, "job_rejected")[0]["reason"] == done.reason
    # And it is not retried, however long the worker waits
    clock.now += 86400
    assert worker.run_once() is None
    assert JobQueue(store.index).get(job.id) == done


# -- failures that are retried -------------------------------------------------------


def test_a_failing_model_is_retried_with_backoff_then_fails(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    chest_ct: list[bytes],
) -> None:
    # Given a model that raises on every run
    def crash(_volume: Volume) -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    fake(worker).before = crash
    job = receive_and_route(config, store, chest_ct, clock)
    reason = "the model failed: RuntimeError: CUDA error: an illegal memory access"
    # When the worker runs it the first time
    done = worker.run_once()
    # Then the job goes back to pending with the reason and a 10 s delay
    assert done is not None
    assert (done.state, done.attempts, done.reason) == (JobState.PENDING, 1, reason)
    [retry] = events_of(store, job.id, "job_retry")
    assert retry == {"reason": reason, "attempt": 1, "delay_seconds": 10.0}
    # And it cannot be claimed before the delay is over
    clock.now += 9.9
    assert worker.run_once() is None
    # When the delay is over, then it runs again and waits twice as long after failing
    clock.now += 0.1
    second = worker.run_once()
    assert second is not None
    assert (second.state, second.attempts) == (JobState.PENDING, 2)
    assert events_of(store, job.id, "job_retry")[-1]["delay_seconds"] == 20.0
    clock.now += 19.9
    assert worker.run_once() is None
    # When the last attempt fails too
    clock.now += 0.1
    last = worker.run_once()
    # Then the job has failed with the model's reason, and nothing was written
    assert last is not None
    assert (last.state, last.attempts, last.reason) == (JobState.FAILED, 3, reason)
    assert events_of(store, job.id, "job_failed")[0]["reason"] == reason
    assert len(fake(worker).volumes) == 3
    assert not (store.root / "results" / job.id).exists()
    # And it is not run again
    clock.now += 86400
    assert worker.run_once() is None


def test_a_full_disk_while_writing_results_gives_the_job_back(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    chest_ct: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a disk that is full when the results are written
    def disk_full(_folder: Path, _outputs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(work, "write_outputs", disk_full)
    job = receive_and_route(config, store, chest_ct, clock)
    # When the worker runs the job
    done = worker.run_once()
    # Then it is given back for a retry with the reason, and no result.json exists
    assert done is not None
    assert (done.state, done.attempts) == (JobState.PENDING, 1)
    assert done.reason == "cannot write the results: No space left on device"
    assert done.result_relpath is None
    assert not (store.root / "results" / job.id / "result.json").exists()
    [retry] = events_of(store, job.id, "job_retry")
    assert retry["delay_seconds"] == 10.0
    # When the disk has room again and the delay is over
    monkeypatch.undo()
    clock.now += 10
    again = worker.run_once()
    # Then the second attempt is encoded
    assert again is not None
    assert (again.state, again.attempts) == (JobState.ENCODED, 2)
    assert (store.root / "results" / job.id / "result.json").is_file()


def test_a_series_file_gone_missing_is_retried_not_rejected(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    chest_ct: list[bytes],
) -> None:
    # Given a routed series one of whose files cannot be read (a storage hiccup)
    job = receive_and_route(config, store, chest_ct, clock)
    relpaths = JobQueue(store.index).series_instance_relpaths(job.series_uid)
    store.path_of(relpaths[0]).unlink()
    # When the worker runs the job
    done = worker.run_once()
    # Then the machine, not the data, is blamed: the job waits for a retry
    assert done is not None and done.state is JobState.PENDING
    assert done.reason is not None
    assert done.reason.startswith("cannot read the series: file ")
    assert "cannot be read" in done.reason
    assert fake(worker).volumes == []


def test_a_model_that_is_not_installed_is_retried_with_the_reason(
    tmp_path: Path, registry: ModelRegistry, clock: Clock, chest_ct: list[bytes]
) -> None:
    # Given a route to a model no package provides
    base = make_config(tmp_path / "store")
    route = base.routes[0].model_copy(update={"model": "emphysema"})
    config = base.model_copy(update={"routes": [route]})
    store = open_store(config)
    try:
        job = receive_and_route(config, store, chest_ct, clock)
        # When a worker runs the job
        done = Worker(config, store, registry, clock=clock).run_once()
        # Then it is given back with a reason naming the model, as a failure of the node
        assert done is not None and (done.id, done.state) == (job.id, JobState.PENDING)
        assert done.reason is not None
        assert done.reason.startswith("model 'emphysema' cannot run: no model package named")
    finally:
        store.close()


def test_an_error_serialising_the_results_gives_the_job_back_with_its_reason(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    chest_ct: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an output pydicom cannot serialise (it checks many values only when writing)
    def bad_value(_folder: Path, _outputs: object) -> None:
        raise ValueError("Invalid value for VR US: 70000")

    monkeypatch.setattr(work, "write_outputs", bad_value)
    job = receive_and_route(config, store, chest_ct, clock)
    # When the worker runs the job
    done = worker.run_once()
    # Then it is given back for a retry, with the error as its reason
    assert done is not None and done.state is JobState.PENDING
    assert done.reason == "writing the results failed: ValueError: Invalid value for VR US: 70000"
    assert events_of(store, job.id, "job_retry")[0]["delay_seconds"] == 10.0


# -- leases --------------------------------------------------------------------------


def test_a_worker_that_lost_its_lease_writes_nothing_and_does_not_finish(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    chest_ct: list[bytes],
) -> None:
    # Given a model run during which the lease renewer finds the lease lost
    fake(worker).before = lambda _volume: worker._lease_lost.set()
    job = receive_and_route(config, store, chest_ct, clock)
    # When the worker runs the job
    done = worker.run_once()
    # Then it wrote no result and did not mark the job encoded
    assert done is not None
    assert len(fake(worker).volumes) == 1
    assert not (store.root / "results" / job.id).exists()
    assert (done.state, done.result_relpath) == (JobState.RUNNING, None)
    assert "job_encoded" not in event_kinds(store, job.id)
    # And once the lease expires, another worker takes the job over
    clock.now += LEASE + 1
    other = JobQueue(store.index).claim("other:1:w1", LEASE, clock(), 3)
    assert other is not None and (other.id, other.attempts) == (job.id, 2)
    assert events_of(store, job.id, "job_claimed")[-1]["lease_expired"] is True


def test_a_worker_whose_job_was_taken_over_does_not_mark_it_encoded(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    chest_ct: list[bytes],
) -> None:
    # Given a model so slow that the lease expires and another worker claims the job
    queue = JobQueue(store.index)

    def stall(_volume: Volume) -> None:
        clock.now += LEASE + 1
        assert queue.claim("other:1:w1", LEASE, clock(), 3) is not None

    fake(worker).before = stall
    job = receive_and_route(config, store, chest_ct, clock)
    # When the first worker finishes its run
    done = worker.run_once()
    # Then the job still belongs to the other worker, running, not encoded by this one
    assert done is not None
    assert (done.state, done.attempts) == (JobState.RUNNING, 2)
    assert "job_encoded" not in event_kinds(store, job.id)
    assert queue.renew(job.id, "other:1:w1", LEASE, clock())


class Stop:
    """A stand-in for the renewer's stop event: wait() answers from a script, at once."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers

    def wait(self, _timeout: float | None = None) -> bool:
        return self.answers.pop(0)


def test_the_renewer_flags_a_lost_lease(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a queue that no longer lets this worker renew
    calls: list[str] = []

    def refuse(job_id: str, _owner: str, _lease: float, _now: float) -> bool:
        calls.append(job_id)
        return False

    monkeypatch.setattr(worker.queue, "renew", refuse)
    # When the renewer's first period is over
    worker._renew("job-1", Stop([False, False]))  # type: ignore[arg-type]
    # Then it tried once, flagged the lease lost and stopped
    assert calls == ["job-1"]
    assert worker._lease_lost.is_set()


def test_the_renewer_keeps_renewing_through_errors_until_stopped(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue that is busy once, then renews
    answers: list[bool | Exception] = [OSError("database is locked"), True]

    def renew(_job_id: str, _owner: str, _lease: float, _now: float) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(worker.queue, "renew", renew)
    # When two periods pass and then the job ends
    worker._renew("job-1", Stop([False, False, True]))  # type: ignore[arg-type]
    # Then both renewals were tried and the lease is not flagged lost
    assert answers == []
    assert not worker._lease_lost.is_set()


# -- what to encode ------------------------------------------------------------------


def job_for(*send_to: str) -> Job:
    return Job(
        id="job-1",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        generation=1,
        route="chest",
        model=MODEL,
        state=JobState.RUNNING,
        priority=0,
        attempts=1,
        send_to=send_to,
    )


def test_output_kinds_are_the_union_of_the_destinations_outputs(worker: Worker) -> None:
    # Given destinations wanting [sc, kos, pdf] and [seg, sr, pdf] (with kos in case it
    # refuses SEG or SR)
    # Then one destination gets its own kinds, two get their union without repeats
    assert worker.output_kinds(job_for("viewer")) == ["sc", "kos", "pdf"]
    both = worker.output_kinds(job_for("viewer", "archive"))
    assert sorted(both) == sorted({"sc", "kos", "pdf", "seg", "sr"})
    assert len(both) == len(set(both))
    # And the fallback of a destination wanting SEG and SR is encoded too, in case
    # it refuses them; a destination no longer configured adds nothing
    assert worker.output_kinds(job_for("archive", "gone")) == ["seg", "sr", "kos", "pdf"]


def test_output_kinds_are_everything_for_a_job_without_destinations(worker: Worker) -> None:
    # Given a job whose route sends nowhere (results kept for people to look at)
    # Then every kind is encoded
    assert worker.output_kinds(job_for()) == list(ALL_OUTPUTS)


def test_two_series_of_one_study_get_result_series_numbers_of_their_own(
    config: NodeConfig,
    store: InstanceStore,
    worker: Worker,
    clock: Clock,
    tmp_path: Path,
) -> None:
    # Given a study with two CT series (say two reconstructions), both routed to the model
    study = pydicom.uid.generate_uid(prefix=None)
    for number, name in ((2, "lung"), (3, "soft")):
        series = write_ct_series(
            tmp_path / name, slices=30, rows=256, cols=256, slice_thickness_mm=1.25,
            study_uid=study, series_number=number,
        )  # fmt: skip
        for path in series.paths:
            data = path.read_bytes()
            store.store_instance(read_header(data), data, source="pacs", calling_ae="PACS1")
    store.index.complete_quiet_series(quiet_before=time.time() + 1, now=clock())
    assert route_pending(config, store, JobQueue(store.index), now=clock) == 2
    # When the worker runs both jobs
    ran = [worker.run_once(), worker.run_once()]
    assert all(job is not None and job.state is JobState.ENCODED for job in ran)
    # Then their result series have different numbers, none of them 2 or 3
    numbers = []
    for job in ran:
        assert job is not None and job.result_relpath is not None
        meta = json.loads((store.root / job.result_relpath / "result.json").read_text())
        numbers.extend(o["series_number"] for o in meta["outputs"])
    assert len(numbers) == len(set(numbers)) == 6  # sc, kos, pdf for each job
    assert not {2, 3} & set(numbers)
