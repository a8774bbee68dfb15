"""Deliveries in the index: opened per destination, leased, retried with a maximum
age, failed into the dead letter, put back by retry; the job's state follows."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from node.cli.serve import open_store
from node.config import NodeConfig
from node.domain import DeliveryState, Job, JobState
from node.export import retry_delay
from node.store import DeliveryQueue, InstanceStore, JobQueue
from node.store.owners import owner_is_gone, pid_alive, this_host
from node.store.schema import jobs as jobs_table
from tests.delivery_helpers import claimed_job

NOW = 1_800_000_000.0
LEASE = 300.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InstanceStore]:
    config = NodeConfig.model_validate({"storage": {"root": str(tmp_path), "min_free_mb": 0}})
    opened = open_store(config)
    yield opened
    opened.close()


def encoded(store: InstanceStore, folder: Path, send_to: tuple[str, ...], priority: int = 0) -> Job:
    """A small series received, routed to `send_to` and marked encoded."""
    job = claimed_job(store, folder, send_to, priority=priority, now=NOW, owner="w")
    queue = JobQueue(store.index)
    assert queue.finish(job.id, "w", JobState.ENCODED, NOW, result_relpath=f"results/{job.id}")
    return job


def state_of(store: InstanceStore, job: Job) -> JobState:
    found = JobQueue(store.index).get(job.id)
    assert found is not None
    return found.state


def test_an_encoded_job_opens_one_delivery_per_destination(
    store: InstanceStore, tmp_path: Path
) -> None:
    # Given a job encoded for two destinations and one for none
    job = encoded(store, tmp_path / "a", ("pacs", "archive"))
    lonely = encoded(store, tmp_path / "b", ())
    queue = DeliveryQueue(store.index)
    # When deliveries are opened, twice
    assert queue.open_deliveries(NOW) == [job.id]
    assert queue.open_deliveries(NOW) == []
    # Then the job is delivering with one pending delivery per destination
    assert state_of(store, job) is JobState.DELIVERING
    assert [(d.destination, d.state) for d in queue.for_job(job.id)] == [
        ("archive", DeliveryState.PENDING),
        ("pacs", DeliveryState.PENDING),
    ]
    # And the job with no destination keeps its results, encoded
    assert state_of(store, lonely) is JobState.ENCODED


def test_the_job_is_delivered_only_when_every_destination_confirmed(
    store: InstanceStore, tmp_path: Path
) -> None:
    job = encoded(store, tmp_path / "a", ("pacs", "archive"))
    queue = DeliveryQueue(store.index)
    queue.open_deliveries(NOW)
    # When the PACS confirms
    pacs = queue.claim("pacs", "x", LEASE, NOW)
    assert pacs is not None and pacs.attempts == 1 and pacs.result_relpath == f"results/{job.id}"
    assert queue.confirm(pacs.id, "x", ["1.2.3"], NOW, LEASE)
    assert queue.succeed(pacs.id, "x", NOW, {"objects": 1}) is JobState.DELIVERING
    # Then the job waits for the archive
    assert state_of(store, job) is JobState.DELIVERING
    # When the archive confirms too, the job is delivered
    archive = queue.claim("archive", "x", LEASE, NOW)
    assert archive is not None
    assert queue.succeed(archive.id, "x", NOW, {}) is JobState.DELIVERED
    assert state_of(store, job) is JobState.DELIVERED
    # And what the PACS confirmed is recorded
    [done] = [d for d in queue.for_job(job.id) if d.destination == "pacs"]
    assert done.confirmed == frozenset({"1.2.3"}) and done.delivered_at == NOW


def test_deliveries_are_claimed_by_priority_and_a_lost_lease_comes_back(
    store: InstanceStore, tmp_path: Path
) -> None:
    low = encoded(store, tmp_path / "a", ("pacs",), priority=0)
    high = encoded(store, tmp_path / "b", ("pacs",), priority=9)
    queue = DeliveryQueue(store.index)
    queue.open_deliveries(NOW)
    # Given the urgent job is claimed first
    first = queue.claim("pacs", "exporter-1", LEASE, NOW)
    assert first is not None and first.job_id == high.id
    second = queue.claim("pacs", "exporter-1", LEASE, NOW)
    assert second is not None and second.job_id == low.id
    assert queue.claim("pacs", "exporter-2", LEASE, NOW) is None
    # When the lease of the first runs out without progress
    again = queue.claim("pacs", "exporter-2", LEASE, NOW + LEASE + 1)
    # Then another exporter takes it over, and the first can no longer record anything
    assert again is not None and again.job_id == high.id and again.attempts == 2
    assert not queue.confirm(first.id, "exporter-1", ["1.2.3"], NOW, LEASE)
    assert queue.succeed(first.id, "exporter-1", NOW, {}) is None


def test_a_failing_delivery_backs_off_then_fails_after_the_maximum_age(
    store: InstanceStore, tmp_path: Path
) -> None:
    job = encoded(store, tmp_path / "a", ("pacs",))
    queue = DeliveryQueue(store.index)
    queue.open_deliveries(NOW)
    # Given a first attempt that failed
    d = queue.claim("pacs", "x", LEASE, NOW)
    assert d is not None
    state = queue.retry_later(d.id, "x", "connection refused", NOW, 10, 3600)
    # Then it waits out its delay
    assert state is DeliveryState.PENDING
    assert queue.claim("pacs", "x", LEASE, NOW + 9) is None
    assert queue.next_due("pacs") == NOW + 10
    # When it fails again past the maximum age
    d = queue.claim("pacs", "x", LEASE, NOW + 3600)
    assert d is not None
    state = queue.retry_later(d.id, "x", "connection refused", NOW + 3600, 20, 3600)
    # Then it is in the dead letter, and so is the job, with the reason
    assert state is DeliveryState.FAILED
    failed = JobQueue(store.index).get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.reason is not None
    assert failed.reason.startswith("not delivered to pacs: gave up after 2 attempts over 1.0 h")
    assert failed.reason.endswith("last error: connection refused")
    # When IT retries the job
    assert queue.retry_job(job.id, NOW + 7200) == 1
    # Then it is delivering again, with fresh attempts and a fresh maximum age
    assert state_of(store, job) is JobState.DELIVERING
    d = queue.claim("pacs", "x", LEASE, NOW + 7200)
    assert d is not None and d.attempts == 1 and d.started_at == NOW + 7200


def test_a_delivery_to_a_destination_no_longer_configured_fails_with_what_to_do(
    store: InstanceStore, tmp_path: Path
) -> None:
    job = encoded(store, tmp_path / "a", ("old-pacs",))
    queue = DeliveryQueue(store.index)
    queue.open_deliveries(NOW)
    assert queue.fail_unknown_destinations(["pacs"], NOW) == 1
    [d] = queue.for_job(job.id)
    assert d.state is DeliveryState.FAILED
    assert "'old-pacs' is not configured" in str(d.reason) and "radnode retry" in str(d.reason)
    assert state_of(store, job) is JobState.FAILED


def test_a_restarted_node_resumes_deliveries_and_jobs_of_its_dead_processes_at_once(
    store: InstanceStore, tmp_path: Path
) -> None:
    # Given a delivery and a job leased to processes of this host that are gone, and a
    # delivery leased to a live process
    job = encoded(store, tmp_path / "a", ("pacs", "archive"))
    queue = DeliveryQueue(store.index)
    queue.open_deliveries(NOW)
    dead = dead_pid()
    assert queue.claim("pacs", f"{this_host()}:{dead}:exporter", LEASE, NOW) is not None
    assert queue.claim("archive", f"{this_host()}:1:exporter", LEASE, NOW) is not None
    jobs = JobQueue(store.index)
    other = encoded(store, tmp_path / "b", ())
    with store.index.write_transaction() as conn:  # its worker died mid-run
        conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == other.id)
            .values(state="running", lease_owner=f"{this_host()}:{dead}:w1",
                    lease_expires_at=NOW + LEASE)
        )  # fmt: skip
    # When the node starts again
    assert queue.release_orphans(this_host(), NOW + 1) == 1
    assert jobs.release_orphans(this_host(), NOW + 1) == 1
    # Then the dead exporter's delivery is due now, the live one's is untouched
    states = {d.destination: d.state for d in queue.for_job(job.id)}
    assert states == {"pacs": DeliveryState.PENDING, "archive": DeliveryState.SENDING}
    assert queue.claim("pacs", "new", LEASE, NOW + 1) is not None
    # And the dead worker's job can be claimed at once
    claimed = jobs.claim("new-worker", LEASE, NOW + 1, 3)
    assert claimed is not None and claimed.id == other.id


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = multiprocessing.get_context("spawn").Process(target=os.getpid)
    process.start()
    process.join()
    return int(process.pid or 0)


def test_a_zombie_counts_as_gone() -> None:
    # Given a child that exited and was not reaped (as under an init that never reaps)
    pid = os.fork()
    if pid == 0:  # the child
        os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Then it is not alive, and a lease it held is released
        assert not pid_alive(pid)
        assert owner_is_gone(f"{this_host()}:{pid}:w1", this_host())
    finally:
        os.waitpid(pid, 0)
    # And a live process, or one on another host, is not gone
    assert pid_alive(os.getpid()) and not owner_is_gone("elsewhere:1:w1", this_host())


def test_retry_delays_double_up_to_the_cap_with_jitter() -> None:
    top, bottom = (lambda: 1.0), (lambda: 0.0)
    assert [retry_delay(n, 10, 300, top) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    assert [retry_delay(n, 10, 300, bottom) for n in (1, 2, 7)] == [5, 10, 150]
