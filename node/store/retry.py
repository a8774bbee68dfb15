"""Putting a failed job back, for `radnode retry` and the API: a job that failed
before its results were encoded runs again; one whose delivery gave up is delivered
again. Both start with fresh attempts. A rejected job is bad input: retrying cannot
help, and the answer says what to do instead."""

from __future__ import annotations

from dataclasses import dataclass

from node.domain import Job, JobState
from node.store.deliveries import DeliveryQueue
from node.store.index import InstanceIndex
from node.store.jobs import JobQueue


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """What a retry did: `done` with what happens next, or why it was not retried."""

    job: Job | None
    done: bool
    message: str


def retry_job(index: InstanceIndex, job_id: str, now: float) -> RetryOutcome:
    """Put the failed job `job_id` (or a unique prefix of 8+ characters) back."""
    jobs, deliveries = JobQueue(index), DeliveryQueue(index)
    job = jobs.get(job_id)
    if job is None:
        return RetryOutcome(None, False, "no such job; `radnode jobs` lists them")
    if job.state == JobState.REJECTED:
        return RetryOutcome(
            job,
            False,
            f"rejected ({job.reason}): the series itself cannot be used; fix it at the "
            "source and send it again",
        )
    if job.state != JobState.FAILED:
        return RetryOutcome(job, False, f"is {job.state}, not failed; nothing to retry")
    if job.result_relpath is None:
        if jobs.requeue_failed(job.id, now):
            return RetryOutcome(job, True, "put back to run again")
        return RetryOutcome(job, False, "changed meanwhile; look again")
    if deliveries.retry_job(job.id, now):
        return RetryOutcome(job, True, "put back to be delivered again")
    return RetryOutcome(job, False, "has no failed delivery to retry")
