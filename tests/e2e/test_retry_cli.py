"""`radnode jobs --state failed` and `radnode retry` as IT uses them after fixing the
cause of a failure: a destination that was down for too long, a model that failed,
and a series that was rejected for good."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from node.config import NodeConfig
from node.domain import DeliveryState, JobState
from node.store import DeliveryQueue, InstanceStore, JobQueue
from tests.delivery_helpers import claimed_job, make_store

NOW = time.time()


def radnode(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def routed(store: InstanceStore, folder: Path) -> str:
    return claimed_job(store, folder, ("pacs",), now=NOW).id


def test_failed_jobs_are_listed_with_their_reason_and_put_back_by_retry(tmp_path: Path) -> None:
    # Given a node whose store holds a job not delivered (the PACS was down too long),
    # one whose model failed, and one rejected as bad input
    settings = {
        "storage": {"root": str(tmp_path / "store"), "min_free_mb": 0},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
    }
    config_path = tmp_path / "node.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    store = make_store(NodeConfig.model_validate(settings))
    jobs, deliveries = JobQueue(store.index), DeliveryQueue(store.index)
    undelivered = routed(store, tmp_path / "a")
    jobs.finish(undelivered, "worker", JobState.ENCODED, NOW, result_relpath="results/x")
    deliveries.open_deliveries(NOW)
    [delivery] = deliveries.for_job(undelivered)
    deliveries.give_up(delivery.id, None, "gave up after 9 attempts over 24.0 h", NOW)
    model_failed = routed(store, tmp_path / "b")
    jobs.finish(model_failed, "worker", JobState.FAILED, NOW, reason="the model failed: boom")
    rejected = routed(store, tmp_path / "c")
    jobs.finish(rejected, "worker", JobState.REJECTED, NOW, reason="3 slices, fewer than 30")
    store.close()

    # When IT lists the failed jobs
    listed = radnode(config_path, "jobs", "--state", "failed")
    # Then both failures are there with their reasons
    assert listed.returncode == 0, listed.stderr
    assert "not delivered to pacs: gave up after 9 attempts" in listed.stdout
    assert "the model failed: boom" in listed.stdout
    assert rejected not in listed.stdout

    # When IT retries every failed job
    done = radnode(config_path, "retry", "--all-failed")
    # Then the undelivered one goes back to delivery and the other runs again
    assert done.returncode == 0, done.stderr
    assert f"{undelivered}: put back to be delivered again" in done.stdout
    assert f"{model_failed}: put back to run again" in done.stdout
    store = make_store(NodeConfig.model_validate(settings))
    jobs, deliveries = JobQueue(store.index), DeliveryQueue(store.index)
    assert jobs.get(undelivered).state is JobState.DELIVERING  # type: ignore[union-attr]
    [again] = deliveries.for_job(undelivered)
    assert again.state is DeliveryState.PENDING and again.attempts == 0
    rerun = jobs.get(model_failed)
    assert rerun is not None and rerun.state is JobState.PENDING and rerun.attempts == 0
    store.close()
    # And the job's page shows the delivery waiting and the retry in its timeline
    shown = radnode(config_path, "jobs", undelivered[:8])
    assert "to pacs: pending after 0 attempt(s)" in shown.stdout
    assert "delivery_retry_requested" in shown.stdout

    # When IT retries the rejected job
    refused = radnode(config_path, "retry", rejected)
    # Then it is told why that cannot help, and what to do instead
    assert refused.returncode == 1
    assert "rejected (3 slices, fewer than 30)" in refused.stderr
    assert "send it again" in refused.stderr
