"""Retention: a study goes a set time after its work is done, files first; work under
way or failed keeps it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from node.cli.serve import open_store
from node.config import NodeConfig
from node.domain import JobState, SeriesState
from node.errors import StorageFull
from node.store import InstanceStore, JobQueue, read_header
from node.store.retention import purge_expired
from node.store.schema import jobs
from node.synthetic import write_ct_series
from tests.delivery_helpers import claimed_job

T0 = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InstanceStore]:
    root = tmp_path / "store"
    config = NodeConfig.model_validate({"storage": {"root": str(root), "min_free_mb": 0}})
    opened = open_store(config)
    yield opened
    opened.close()


def finished(store: InstanceStore, folder: Path, state: JobState, at: float) -> str:
    """A study whose one job ended in `state` at `at`, with a result folder; its UID."""
    job = claimed_job(store, folder, ("pacs",), now=at)
    result = f"results/{job.id}"
    (store.root / result).mkdir(parents=True)
    (store.root / result / "result.json").write_text("{}")
    JobQueue(store.index).finish(job.id, "worker", JobState.ENCODED, at, result_relpath=result)
    if state is not JobState.ENCODED:
        with store.index.write_transaction() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job.id).values(state=state))
    store.index.complete_quiet_studies(quiet_before=at + 1e9, now=at)
    return job.study_uid


def test_done_studies_go_after_the_retention_and_the_rest_stay(
    store: InstanceStore, tmp_path: Path
) -> None:
    # Given studies delivered two days ago, delivered an hour ago, failed two days ago,
    # and rejected two days ago
    old = finished(store, tmp_path / "a", JobState.DELIVERED, T0 - 2 * DAY)
    recent = finished(store, tmp_path / "b", JobState.DELIVERED, T0 - 3600)
    failed = finished(store, tmp_path / "c", JobState.FAILED, T0 - 2 * DAY)
    rejected = finished(store, tmp_path / "d", JobState.REJECTED, T0 - 2 * DAY)
    # When the retention of one day is applied
    purged = purge_expired(store.index, store.root, DAY, T0)
    # Then the old delivered and the rejected study are gone, files and rows
    assert sorted(p.study_uid for p in purged) == sorted([old, rejected])
    assert all(p.instances == 3 and p.results == 1 for p in purged)
    remaining = {s.study_uid for s in store.index.list_studies()}
    assert remaining == {recent, failed}
    for uid in (old, rejected):
        assert not (store.root / uid).exists()
    assert {p.parent.parent.name for p in store.root.rglob("*.dcm")} == {recent, failed}
    # And their jobs stay, by UID, without a result to point at
    by_study = {j.study_uid: j for j in JobQueue(store.index).recent()}
    assert by_study[old].state is JobState.DELIVERED and by_study[old].result_relpath is None
    assert not (store.root / f"results/{by_study[old].id}").exists()
    assert (store.root / f"results/{by_study[failed].id}").exists()
    # And each purge is in the event log
    assert sorted(e["study_uid"] for e in store.index.events("study_purged")) == sorted(
        [old, rejected]
    )
    # And a second pass purges nothing more
    assert purge_expired(store.index, store.root, DAY, T0) == []


def test_a_study_no_route_wanted_goes_after_the_retention_and_one_receiving_stays(
    store: InstanceStore, tmp_path: Path
) -> None:
    # Given a study complete two days ago that no route wanted, and one still receiving
    idle = write_ct_series(tmp_path / "idle", slices=2)
    busy = write_ct_series(tmp_path / "busy", slices=2)
    for path in idle.paths:
        data = path.read_bytes()
        store.store_instance(read_header(data), data, source="pacs")
    store.index.complete_quiet_series(quiet_before=time.time() + 1, now=T0 - 2 * DAY)
    store.index.complete_quiet_studies(quiet_before=time.time() + 1, now=T0 - 2 * DAY)
    data = busy.paths[0].read_bytes()
    store.store_instance(read_header(data), data, source="pacs")
    # When the retention of one day is applied
    [purged] = purge_expired(store.index, store.root, DAY, T0)
    # Then only the idle study goes
    assert purged.study_uid == idle.study_uid and purged.results == 0
    assert [s.study_uid for s in store.index.list_studies()] == [busy.study_uid]


def test_failed_studies_never_crowd_out_those_that_may_go(
    store: InstanceStore, tmp_path: Path
) -> None:
    # Given three old studies with failed jobs (kept for IT) and one old delivered study
    for name in ("f1", "f2", "f3"):
        finished(store, tmp_path / name, JobState.FAILED, T0 - 3 * DAY)
    old = finished(store, tmp_path / "ok", JobState.DELIVERED, T0 - 2 * DAY)
    # When retention runs with room for two studies a pass
    purged = purge_expired(store.index, store.root, DAY, T0, limit=2)
    # Then the delivered study goes, though the failed ones are older
    assert [p.study_uid for p in purged] == [old]


def test_a_purged_series_sent_again_is_a_new_generation_with_its_attributes_back(
    store: InstanceStore, tmp_path: Path
) -> None:
    # Given a study purged after its delivery
    uid = finished(store, tmp_path / "a", JobState.DELIVERED, T0 - 2 * DAY)
    [purged] = purge_expired(store.index, store.root, DAY, T0)
    assert purged.study_uid == uid and store.index.list_studies() == []
    # When the PACS sends its series again
    for path in sorted((tmp_path / "a").glob("*.dcm")):
        data = path.read_bytes()
        store.store_instance(read_header(data), data, source="pacs")
    # Then it is a new generation of the series, receiving, listed with its patient again
    [study] = store.index.list_studies()
    assert study.study_uid == uid and study.instance_count == 3
    assert study.patient_name == "SYNTHETIC^PATIENT"
    [series] = study.series
    assert series.state == SeriesState.RECEIVING and series.instance_count == 3
    reopened = store.index.events("series_reopened")
    assert reopened and reopened[-1]["detail"]["generation"] == 2


def test_an_instance_whose_file_a_purge_removed_is_refused_for_a_retry(
    store: InstanceStore, tmp_path: Path
) -> None:
    # Given a complete study, and an instance of it whose file vanished (the purge
    # took it between its placement and its indexing)
    uid = finished(store, tmp_path / "a", JobState.DELIVERED, T0 - 2 * DAY)
    [path] = sorted((tmp_path / "a").glob("*.dcm"))[:1]
    data = path.read_bytes()
    header = read_header(data)
    # When the index is asked to record it with the file gone
    with pytest.raises(StorageFull, match="being purged by retention"):
        store.index.record_instance(
            header, relpath=f"{uid}/x/y.dcm", size=len(data), sha256="0" * 64,
            source="pacs", calling_ae=None, now=T0, present=lambda: False,
        )  # fmt: skip
