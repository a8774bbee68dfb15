"""`radnode jobs` and `radnode retry`: what the node did with each series, and a way
to put failed work back once its cause is fixed."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import datetime

from node.cli.serve import open_store
from node.config import NodeConfig
from node.domain import JobState
from node.store import DeliveryQueue, JobQueue
from node.store.retry import retry_job

EXIT_OK = 0
EXIT_FAILED = 1


def _when(at: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(at).strftime(fmt)


def show_job(config: NodeConfig, job_id: str) -> int:
    """Print one job, its deliveries and its timeline: each step, when, and how long
    after the one before."""
    store = open_store(config)
    try:
        queue = JobQueue(store.index)
        job = queue.get(job_id)
        story = queue.timeline(job.id) if job is not None else []
        deliveries = DeliveryQueue(store.index).for_job(job.id) if job is not None else []
    finally:
        store.close()
    if job is None:
        print(f"radnode: no job {job_id!r}; `radnode jobs` lists them", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"job {job.id}  {job.state}  model {job.model}  route {job.route}  "
        f"attempts {job.attempts}  series {job.series_uid} (generation {job.generation})"
    )
    if job.reason:
        print(f"reason: {job.reason}")
    if job.result_relpath:
        print(f"result: {job.result_relpath}")
    for d in deliveries:
        done = f" at {_when(d.delivered_at)}" if d.delivered_at else ""
        due = (
            f", next attempt {_when(d.due_at, '%H:%M:%S')}"
            if d.state == "pending" and d.attempts
            else ""
        )
        why = f": {d.reason}" if d.reason and d.state != "delivered" else ""
        print(
            f"to {d.destination}: {d.state}{done} after {d.attempts} attempt(s), "
            f"{len(d.confirmed)} object(s) confirmed{due}{why}"
        )
    start = story[0]["at"] if story else 0.0
    previous = start
    for event in story:
        at = float(event["at"])
        print(
            f"  {_when(at, '%H:%M:%S.%f')[:-3]}  +{at - start:8.2f} s  ({at - previous:+7.2f} s)  "
            f"{event['kind']:<24} {_event_summary(event.get('detail'))}"
        )
        previous = at
    return EXIT_OK


def _event_summary(detail: object) -> str:
    """A short line of what an event recorded (reasons, workers, counts, timings)."""
    if not isinstance(detail, dict):
        return ""
    parts = []
    for key, value in detail.items():
        if value in (None, {}, []):
            continue
        if key == "timings" and isinstance(value, dict):
            value = ", ".join(f"{k} {v:.2f} s" for k, v in value.items())
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def list_jobs(config: NodeConfig, state: str | None, limit: int) -> int:
    """Print recent jobs with their state and reason."""
    wanted = JobState(state) if state else None
    store = open_store(config)
    try:
        jobs = JobQueue(store.index).recent(wanted, limit)
    finally:
        store.close()
    if not jobs:
        print("no jobs" + (f" in state {state}" if state else ""))
        return EXIT_OK
    for job in jobs:
        reason = f"  reason: {job.reason}" if job.reason else ""
        print(
            f"{job.id}  {job.state:<10} {job.model:<14} route {job.route:<12} "
            f"attempts {job.attempts}  updated {_when(job.updated_at)}  "
            f"series {job.series_uid}{reason}"
        )
    return EXIT_OK


def retry(config: NodeConfig, job_ids: Sequence[str], all_failed: bool) -> int:
    """`radnode retry`: failed jobs run again (inference failures) or are delivered
    again (delivery failures), with fresh attempts. A running node picks them up."""
    store = open_store(config)
    problems = 0
    try:
        wanted = list(job_ids)
        if all_failed:
            failed = JobQueue(store.index).recent(JobState.FAILED, limit=100_000)
            if not failed:
                print("no failed jobs")
            wanted = [job.id for job in failed] + wanted
        for job_id in wanted:
            outcome = retry_job(store.index, job_id, time.time())
            name = outcome.job.id if outcome.job is not None else job_id
            if outcome.done:
                print(f"{name}: {outcome.message}")
            else:
                print(f"{name}: not retried: {outcome.message}", file=sys.stderr)
                problems += 1
    finally:
        store.close()
    return EXIT_FAILED if problems else EXIT_OK
