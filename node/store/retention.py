"""Retention: received instances and results are kept no longer than needed.

A study is purged `storage.retention_hours` after its work is done: every job of it
delivered, rejected, or encoded for no destination (or, when no route wanted it,
after it was complete). A study with a job still under way or failed is kept: a
failure waits for IT. Purging removes the study's files and its results, then its
rows (with the patient attributes) from the index; the jobs and events stay, by UID
only, so `radnode jobs` still tells what happened. Files go first: a crash in the
middle leaves index rows that the next purge removes, never files that the start-up
scan would index again.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, delete, exists, func, or_, select, update

from node.domain import JobState, SeriesState, StudyState
from node.store.index import InstanceIndex
from node.store.schema import events, instances, jobs, series, studies

# Jobs in these states need nothing more from the study's files.
_DONE = (JobState.DELIVERED, JobState.REJECTED)


@dataclass(frozen=True, slots=True)
class PurgedStudy:
    """A study purged: its UID and what went (counts, no patient data)."""

    study_uid: str
    instances: int
    results: int


def purge_expired(
    index: InstanceIndex, root: Path, retention_seconds: float, now: float, limit: int = 20
) -> list[PurgedStudy]:
    """Purge up to `limit` studies whose work ended more than `retention_seconds` ago."""
    cutoff = now - retention_seconds
    nowhere = and_(
        jobs.c.state == JobState.ENCODED, or_(jobs.c.send_to.is_(None), jobs.c.send_to == "[]")
    )
    # A study waits while any job of it is unfinished or failed, or ended recently;
    # those are left out here, so that they never crowd out the studies that may go.
    waiting = exists().where(
        jobs.c.study_uid == studies.c.study_uid,
        or_(and_(jobs.c.state.not_in(list(_DONE)), ~nowhere), jobs.c.updated_at > cutoff),
    )
    with index.read_transaction() as conn:
        candidates = conn.execute(
            select(studies.c.study_uid)
            .where(
                studies.c.state == StudyState.COMPLETE,
                studies.c.completed_at <= cutoff,
                studies.c.instance_count > 0,  # 0: purged already
                ~waiting,
            )
            .order_by(studies.c.completed_at)
            .limit(limit)
        ).scalars()
        uids = list(candidates)
    purged: list[PurgedStudy] = []
    for study_uid in uids:
        done = _purge_if_done(index, root, study_uid, cutoff, now)
        if done is not None:
            purged.append(done)
    return purged


def _purge_if_done(
    index: InstanceIndex, root: Path, study_uid: str, cutoff: float, now: float
) -> PurgedStudy | None:
    # Under the write lock: no instance of the study is indexed while it goes.
    with index.write_transaction() as conn:
        study = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).first()
        if study is None or study.state != StudyState.COMPLETE:
            return None
        receiving = conn.execute(
            select(func.count()).where(
                series.c.study_uid == study_uid, series.c.state == SeriesState.RECEIVING
            )
        ).scalar()
        if receiving:
            return None
        rows = conn.execute(
            select(
                jobs.c.id, jobs.c.state, jobs.c.send_to, jobs.c.updated_at, jobs.c.result_relpath
            ).where(jobs.c.study_uid == study_uid)
        ).all()
        for job in rows:
            nowhere = job.state == JobState.ENCODED and job.send_to in (None, "[]")
            if job.state not in _DONE and not nowhere:
                return None  # still under way, or failed and waiting for IT
            if job.updated_at > cutoff:
                return None  # done, but not long enough ago
        count = conn.execute(
            select(func.count()).where(instances.c.study_uid == study_uid)
        ).scalar()
        # Files first (see the module's docstring); each folder is ours alone.
        shutil.rmtree(root / study_uid, ignore_errors=True)
        results = 0
        for job in rows:
            if job.result_relpath:
                shutil.rmtree(root / job.result_relpath, ignore_errors=True)
                results += 1
        conn.execute(delete(instances).where(instances.c.study_uid == study_uid))
        # The study and series rows stay, emptied and without the patient's attributes:
        # a series sent again later reopens as a new generation and is processed anew,
        # instead of colliding with the jobs of its first life.
        conn.execute(update(series).where(series.c.study_uid == study_uid).values(instance_count=0))
        conn.execute(
            update(studies)
            .where(studies.c.study_uid == study_uid)
            .values(instance_count=0, patient_name=None, patient_id=None, study_description=None)
        )
        conn.execute(update(jobs).where(jobs.c.study_uid == study_uid).values(result_relpath=None))
        conn.execute(
            events.insert().values(
                at=now,
                kind="study_purged",
                study_uid=study_uid,
                detail=json.dumps({"instances": int(count or 0), "results": results}),
            )
        )
    return PurgedStudy(study_uid, int(count or 0), results)
