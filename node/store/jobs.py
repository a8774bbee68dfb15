"""Jobs in the index: routed series become jobs that workers claim with a lease.

Every transition is one transaction and leaves an event, so the state survives a
kill -9 and tells its story afterwards. A claim is a lease with an expiry: a worker
that dies stops renewing it, and the job runs again once it expires, until the
attempts run out. Job ids derive from (series, generation, model), so routing the
same series twice (after a crash) creates nothing new.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, exists, insert, or_, select, update

from node.domain import Job, JobState, RouteMatch, SeriesFacts, SeriesState
from node.store.index import InstanceIndex
from node.store.owners import owner_is_gone
from node.store.schema import events, instances, jobs, series

# The series events a job's timeline shows before its own.
_SERIES_STORY = ("series_opened", "series_reopened", "series_complete", "series_routed")
_JOB_NAMESPACE = uuid.UUID("0b7f6a52-3a51-4c41-9d6c-5d1f3c6b1a70")


def job_id_for(series_uid: str, generation: int, model: str) -> str:
    """The job's id: the same series generation and model always give the same id."""
    return str(uuid.uuid5(_JOB_NAMESPACE, f"{series_uid}/{generation}/{model}"))


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        generation=row.generation,
        route=row.route,
        model=row.model,
        state=JobState(row.state),
        priority=row.priority,
        attempts=row.attempts,
        send_to=tuple(json.loads(row.send_to)) if row.send_to else (),
        reason=row.reason,
        result_relpath=row.result_relpath,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _event(conn: Connection, now: float, kind: str, job: Any, detail: dict[str, Any]) -> None:
    conn.execute(
        insert(events).values(
            at=now,
            kind=kind,
            study_uid=job.study_uid,
            series_uid=job.series_uid,
            job_id=job.id,
            detail=json.dumps(detail) if detail else None,
        )
    )


class JobQueue:
    """Routing's output and the workers' input, kept in the index."""

    def __init__(self, index: InstanceIndex) -> None:
        self.index = index

    # -- routing ---------------------------------------------------------------------

    def series_to_route(self, limit: int = 50) -> list[tuple[str, int]]:
        """Complete series whose current generation has not been routed yet."""
        with self.index.read_transaction() as conn:
            rows = conn.execute(
                select(series.c.series_uid, series.c.generation)
                .where(
                    series.c.state == SeriesState.COMPLETE,
                    series.c.routed_generation < series.c.generation,
                )
                .order_by(series.c.completed_at)
                .limit(limit)
            ).all()
        return [(r.series_uid, r.generation) for r in rows]

    def series_facts(self, series_uid: str) -> tuple[SeriesFacts, str] | None:
        """The index's facts on a series and the relpath of a representative instance."""
        with self.index.read_transaction() as conn:
            row = conn.execute(select(series).where(series.c.series_uid == series_uid)).first()
            if row is None:
                return None
            relpaths = list(
                conn.execute(
                    select(instances.c.relpath)
                    .where(instances.c.series_uid == series_uid)
                    .order_by(instances.c.relpath)
                ).scalars()
            )
        facts = SeriesFacts(
            study_uid=row.study_uid,
            series_uid=row.series_uid,
            generation=row.generation,
            source=row.source,
            modality=row.modality or "",
            body_part=row.body_part or "",
            series_description=row.series_description or "",
            instance_count=row.instance_count,
        )
        return facts, relpaths[len(relpaths) // 2] if relpaths else ""

    def study_series_numbers(self, study_uid: str) -> frozenset[int]:
        """The SeriesNumbers the study's series already use (results must not collide)."""
        with self.index.read_transaction() as conn:
            numbers = conn.execute(
                select(series.c.series_number).where(series.c.study_uid == study_uid)
            ).scalars()
            return frozenset(int(n) for n in numbers if n is not None)

    def study_jobs(self, study_uid: str, state: JobState | None = None) -> list[Job]:
        """The study's jobs (optionally in one state), oldest first."""
        query = select(jobs).where(jobs.c.study_uid == study_uid).order_by(jobs.c.created_at)
        if state is not None:
            query = query.where(jobs.c.state == state)
        with self.index.read_transaction() as conn:
            return [_job(row) for row in conn.execute(query)]

    def series_instance_relpaths(self, series_uid: str) -> list[str]:
        """The relpaths of every instance of a series, in no particular order."""
        with self.index.read_transaction() as conn:
            return list(
                conn.execute(
                    select(instances.c.relpath).where(instances.c.series_uid == series_uid)
                ).scalars()
            )

    def record_routing(
        self,
        facts: SeriesFacts,
        matches: Sequence[RouteMatch],
        now: float,
        unmatched: dict[str, str] | None = None,
    ) -> list[Job]:
        """Create the jobs for one routed series generation, once; return the new ones.

        Jobs of older generations that have not started are superseded: the series
        changed under them, and the new generation's jobs replace them.
        """
        created: list[Job] = []
        with self.index.write_transaction() as conn:
            current = conn.execute(
                select(series.c.state, series.c.generation, series.c.routed_generation).where(
                    series.c.series_uid == facts.series_uid
                )
            ).first()
            if (
                current is None
                or current.state != SeriesState.COMPLETE
                or current.generation != facts.generation
                or current.routed_generation >= facts.generation
            ):
                # Already routed, or the series changed since it was listed: it is
                # routed again once its new generation is complete.
                return []
            stale = conn.execute(
                select(jobs).where(
                    jobs.c.series_uid == facts.series_uid,
                    jobs.c.generation < facts.generation,
                    jobs.c.state.in_([JobState.PENDING, JobState.FAILED]),
                )
            ).all()
            for old in stale:
                reason = f"superseded: the series changed (generation {facts.generation})"
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == old.id)
                    .values(state=JobState.REJECTED, reason=reason, updated_at=now)
                )
                _event(conn, now, "job_superseded", old, {"reason": reason})
            for match in matches:
                job_id = job_id_for(facts.series_uid, facts.generation, match.model)
                if conn.execute(select(jobs.c.id).where(jobs.c.id == job_id)).first():
                    continue
                values = {
                    "id": job_id,
                    "study_uid": facts.study_uid,
                    "series_uid": facts.series_uid,
                    "generation": facts.generation,
                    "route": match.route,
                    "model": match.model,
                    "send_to": json.dumps(list(match.send_to)),
                    "state": JobState.PENDING,
                    "priority": match.priority,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                conn.execute(insert(jobs).values(**values))
                row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
                _event(
                    conn,
                    now,
                    "job_created",
                    row,
                    {"route": match.route, "model": match.model, "priority": match.priority},
                )
                created.append(_job(row))
            conn.execute(
                update(series)
                .where(series.c.series_uid == facts.series_uid)
                .values(routed_generation=facts.generation)
            )
            conn.execute(
                insert(events).values(
                    at=now,
                    kind="series_routed",
                    study_uid=facts.study_uid,
                    series_uid=facts.series_uid,
                    detail=json.dumps(
                        {
                            "generation": facts.generation,
                            "routes": [m.route for m in matches],
                            "not_matched": unmatched or {},
                        }
                    ),
                )
            )
        return created

    # -- workers ---------------------------------------------------------------------

    def claim(self, owner: str, lease_seconds: float, now: float, max_attempts: int) -> Job | None:
        """Lease the next job (highest priority, then oldest) to `owner`, or None.

        A running job whose lease expired is claimable again; one that has used up
        its attempts that way is marked failed instead.
        """
        expired = and_(jobs.c.state == JobState.RUNNING, jobs.c.lease_expires_at < now)
        # A pending job waits out its retry delay (kept in lease_expires_at), and runs
        # only on the generation of its series that is complete now: a series reopened
        # by a late instance waits until it is complete again.
        pending = and_(
            jobs.c.state == JobState.PENDING,
            or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at <= now),
        )
        # Workers poll often: an idle poll only reads, and never waits for the writers.
        with self.index.read_transaction() as conn:
            if (
                conn.execute(select(jobs.c.id).where(or_(pending, expired)).limit(1)).first()
                is None
            ):
                return None
        with self.index.write_transaction() as conn:
            worn_out = conn.execute(
                select(jobs).where(expired, jobs.c.attempts >= max_attempts)
            ).all()
            for row in worn_out:
                reason = (
                    f"the worker stopped renewing its lease {row.attempts} times "
                    "(crashed or killed); not retried automatically"
                )
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == row.id)
                    .values(state=JobState.FAILED, reason=reason, lease_owner=None, updated_at=now)
                )
                _event(conn, now, "job_failed", row, {"reason": reason})
            current = exists().where(
                series.c.series_uid == jobs.c.series_uid,
                series.c.generation == jobs.c.generation,
                series.c.state == SeriesState.COMPLETE,
            )
            next_row = conn.execute(
                select(jobs)
                .where(or_(pending, expired), current)
                .order_by(jobs.c.priority.desc(), jobs.c.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if next_row is None:
                return None
            row = next_row
            resumed = row.state == JobState.RUNNING
            conn.execute(
                update(jobs)
                .where(jobs.c.id == row.id)
                .values(
                    state=JobState.RUNNING,
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                    attempts=jobs.c.attempts + 1,
                    updated_at=now,
                )
            )
            _event(
                conn,
                now,
                "job_claimed",
                row,
                {"worker": owner, "attempt": row.attempts + 1, "lease_expired": resumed},
            )
            claimed = conn.execute(select(jobs).where(jobs.c.id == row.id)).one()
        return _job(claimed)

    def release_orphans(self, host: str, now: float) -> int:
        """Expire the leases of running jobs whose worker on this host is gone (the node
        was killed), so that they run again at once rather than after the lease."""
        with self.index.write_transaction() as conn:
            rows = conn.execute(
                select(jobs).where(
                    jobs.c.state == JobState.RUNNING,
                    jobs.c.lease_owner.startswith(f"{host}:", autoescape=True),
                )
            ).all()
            gone = [row for row in rows if owner_is_gone(row.lease_owner, host)]
            for row in gone:
                conn.execute(
                    update(jobs).where(jobs.c.id == row.id).values(lease_expires_at=now - 1)
                )
                _event(conn, now, "job_lease_released", row, {"reason": "its worker is gone"})
        return len(gone)

    def renew(self, job_id: str, owner: str, lease_seconds: float, now: float) -> bool:
        """Extend the lease; False when `owner` no longer holds it."""
        with self.index.write_transaction() as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.lease_owner == owner,
                    jobs.c.state == JobState.RUNNING,
                )
                .values(lease_expires_at=now + lease_seconds)
            )
            return bool(result.rowcount == 1)

    def finish(
        self,
        job_id: str,
        owner: str,
        state: JobState,
        now: float,
        *,
        reason: str | None = None,
        result_relpath: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Move a leased job on (encoded, rejected, failed); False if the lease was lost."""
        if state in (JobState.PENDING, JobState.RUNNING):
            raise ValueError(f"finish() ends a run; {state} is not an end state")
        with self.index.write_transaction() as conn:
            row = conn.execute(
                select(jobs).where(
                    jobs.c.id == job_id,
                    jobs.c.lease_owner == owner,
                    jobs.c.state == JobState.RUNNING,
                )
            ).first()
            if row is None:
                return False
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=state,
                    reason=reason,
                    result_relpath=result_relpath,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            _event(conn, now, f"job_{state.value}", row, {**(detail or {}), "reason": reason})
        return True

    def release_for_retry(
        self, job_id: str, owner: str, reason: str, now: float, delay_seconds: float = 0.0
    ) -> bool:
        """Give a job back after a transient failure, to run again after `delay_seconds`."""
        with self.index.write_transaction() as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
            ).first()
            if row is None:
                return False
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.PENDING,
                    reason=reason,
                    lease_owner=None,
                    # For a pending job this column holds "not before": the retry delay.
                    lease_expires_at=now + delay_seconds if delay_seconds > 0 else None,
                    updated_at=now,
                )
            )
            _event(
                conn,
                now,
                "job_retry",
                row,
                {"reason": reason, "attempt": row.attempts, "delay_seconds": delay_seconds},
            )
        return True

    def requeue_failed(self, job_id: str, now: float) -> bool:
        """Put a job that failed before it was encoded back in the queue, with fresh
        attempts; False when the job is not in that state."""
        with self.index.write_transaction() as conn:
            row = conn.execute(
                select(jobs).where(
                    jobs.c.id == job_id,
                    jobs.c.state == JobState.FAILED,
                    jobs.c.result_relpath.is_(None),
                )
            ).first()
            if row is None:
                return False
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.PENDING,
                    attempts=0,
                    reason=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            _event(conn, now, "job_retry_requested", row, {"previous_reason": row.reason})
        return True

    # -- listings --------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """One job by id (a unique prefix of at least 8 characters also works)."""
        with self.index.read_transaction() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if row is None and len(job_id) >= 8:
                rows = conn.execute(
                    select(jobs).where(jobs.c.id.startswith(job_id, autoescape=True))
                ).all()
                row = rows[0] if len(rows) == 1 else None
        return _job(row) if row is not None else None

    def recent(self, state: JobState | None = None, limit: int = 200) -> list[Job]:
        """The most recent jobs, optionally in one state."""
        query = select(jobs).order_by(jobs.c.updated_at.desc()).limit(limit)
        if state is not None:
            query = query.where(jobs.c.state == state)
        with self.index.read_transaction() as conn:
            return [_job(row) for row in conn.execute(query)]

    def timeline(self, job_id: str) -> list[dict[str, Any]]:
        """The job's story in order: its series received (first and last instance),
        opened, complete and routed, then the job's own events."""
        with self.index.read_transaction() as conn:
            job = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            if job is None:
                return []
            received = conn.execute(
                select(series.c.first_received_at, series.c.last_received_at).where(
                    series.c.series_uid == job.series_uid
                )
            ).first()
            rows = conn.execute(
                select(events)
                .where(
                    or_(
                        events.c.job_id == job_id,
                        and_(
                            events.c.series_uid == job.series_uid,
                            events.c.job_id.is_(None),
                            events.c.kind.in_(_SERIES_STORY),
                        ),
                    )
                )
                .order_by(events.c.id)
            ).all()
        story = [
            {**row._asdict(), "detail": json.loads(row.detail) if row.detail else None}
            for row in rows
        ]
        if received is not None:
            for kind, at in (
                ("first_instance_received", received.first_received_at),
                ("last_instance_received", received.last_received_at),
            ):
                story.append(
                    {
                        "id": 0,
                        "at": at,
                        "kind": kind,
                        "study_uid": job.study_uid,
                        "series_uid": job.series_uid,
                        "sop_instance_uid": None,
                        "job_id": None,
                        "detail": None,
                    }
                )
        story.sort(key=lambda event: (event["at"], event["id"]))
        return story
