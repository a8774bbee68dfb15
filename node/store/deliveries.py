"""Deliveries in the index: each encoded job's results, one row per destination.

A delivery is claimed with a lease like a job, so a node killed mid-delivery sends
again after a restart (the same UIDs: the destination keeps one copy). The SOP
instances a destination confirmed are recorded one by one, so a retry sends only
what is missing. Deliveries to one destination never wait on another's: each moves
on by itself, and the job's state follows from all of them (delivering while any
is under way, delivered when all are, failed when any has given up).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from node.domain import Delivery, DeliveryState, JobState
from node.store.index import InstanceIndex
from node.store.owners import owner_is_gone
from node.store.schema import deliveries, events, jobs

_DELIVERY_NAMESPACE = uuid.UUID("5d0b6c1e-8f3e-4f7b-9a59-2c1b8e0f4d21")
_UNDER_WAY = (DeliveryState.PENDING, DeliveryState.SENDING)


def delivery_id_for(job_id: str, destination: str) -> str:
    """The delivery's id: one per (job, destination), whoever creates it."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{job_id}/{destination}"))


def _delivery(row: Any, result_relpath: str | None = None) -> Delivery:
    return Delivery(
        id=row.id,
        job_id=row.job_id,
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        destination=row.destination,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        due_at=row.due_at,
        reason=row.reason,
        confirmed=frozenset(json.loads(row.confirmed)) if row.confirmed else frozenset(),
        result_relpath=result_relpath,
        created_at=row.created_at,
        started_at=row.started_at,
        updated_at=row.updated_at,
        delivered_at=row.delivered_at,
    )


def _event(
    conn: Connection,
    now: float,
    kind: str,
    row: Any,
    detail: dict[str, Any],
    job_id: str | None = None,
) -> None:
    """An event in the job's timeline; `row` is a delivery row unless `job_id` is given."""
    conn.execute(
        insert(events).values(
            at=now,
            kind=kind,
            study_uid=row.study_uid,
            series_uid=row.series_uid,
            job_id=job_id or row.job_id,
            detail=json.dumps(detail) if detail else None,
        )
    )


def _duration(seconds: float) -> str:
    """A span in the unit IT reads best: hours from one hour, else minutes or seconds."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _settle_job(conn: Connection, job_id: str, now: float) -> JobState:
    """Set the job's state from its deliveries; return it. One event per change."""
    rows = conn.execute(
        select(deliveries.c.destination, deliveries.c.state, deliveries.c.reason).where(
            deliveries.c.job_id == job_id
        )
    ).all()
    job = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
    states = {row.state for row in rows}
    # The reason `radnode jobs` shows: what failed, and what is being retried and why.
    problems = [
        f"not delivered to {r.destination}: {r.reason}"
        if r.state == DeliveryState.FAILED
        else f"retrying delivery to {r.destination}: {r.reason}"
        for r in rows
        if r.reason and r.state != DeliveryState.DELIVERED
    ]
    reason = "; ".join(problems) or None
    if states & set(_UNDER_WAY):
        state = JobState.DELIVERING
    elif DeliveryState.FAILED in states:
        state = JobState.FAILED
    else:
        state = JobState.DELIVERED
    if state != job.state or reason != job.reason:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(state=state, reason=reason, updated_at=now)
        )
        if state != job.state and state in (JobState.DELIVERED, JobState.FAILED):
            destinations = sorted(r.destination for r in rows)
            _event(
                conn,
                now,
                f"job_{state.value}",
                job,
                {"destinations": destinations, **({"reason": reason} if reason else {})},
                job_id=job.id,
            )
    return state


class DeliveryQueue:
    """The exporter's work list, kept in the index beside the jobs."""

    def __init__(self, index: InstanceIndex) -> None:
        self.index = index

    def open_deliveries(self, now: float, limit: int = 100) -> list[str]:
        """Start delivering encoded jobs: one pending delivery per destination named by
        the job's route, and the job moves to `delivering`. Return the job ids.

        A job whose route sends nowhere stays `encoded`: its results are kept, and
        `radnode send` can push them by hand.
        """
        opened: list[str] = []
        encoded = and_(
            jobs.c.state == JobState.ENCODED,
            jobs.c.send_to.is_not(None),
            jobs.c.send_to != "[]",
        )
        # The exporter polls often: an idle poll only reads.
        with self.index.read_transaction() as conn:
            if conn.execute(select(jobs.c.id).where(encoded).limit(1)).first() is None:
                return opened
        with self.index.write_transaction() as conn:
            rows = conn.execute(
                select(jobs)
                .where(encoded)
                .order_by(jobs.c.priority.desc(), jobs.c.updated_at)
                .limit(limit)
            ).all()
            for job in rows:
                destinations = list(dict.fromkeys(json.loads(job.send_to)))
                for name in destinations:
                    delivery_id = delivery_id_for(job.id, name)
                    if conn.execute(
                        select(deliveries.c.id).where(deliveries.c.id == delivery_id)
                    ).first():
                        continue
                    conn.execute(
                        insert(deliveries).values(
                            id=delivery_id,
                            job_id=job.id,
                            study_uid=job.study_uid,
                            series_uid=job.series_uid,
                            destination=name,
                            state=DeliveryState.PENDING,
                            attempts=0,
                            due_at=now,
                            created_at=now,
                            started_at=now,
                            updated_at=now,
                        )
                    )
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job.id)
                    .values(state=JobState.DELIVERING, reason=None, updated_at=now)
                )
                _event(
                    conn, now, "job_delivering", job, {"destinations": destinations}, job_id=job.id
                )
                opened.append(job.id)
        return opened

    def claim(
        self, destination: str, owner: str, lease_seconds: float, now: float
    ) -> Delivery | None:
        """Lease the next due delivery to `destination` (highest job priority first).

        A delivery whose lease expired (its exporter died) is due again.
        """
        due = and_(
            deliveries.c.destination == destination,
            deliveries.c.state.in_(_UNDER_WAY),
            deliveries.c.due_at <= now,
        )
        with self.index.read_transaction() as conn:  # an idle poll only reads
            if conn.execute(select(deliveries.c.id).where(due).limit(1)).first() is None:
                return None
        with self.index.write_transaction() as conn:
            row = conn.execute(
                select(deliveries, jobs.c.result_relpath)
                .join(jobs, jobs.c.id == deliveries.c.job_id)
                .where(due)
                .order_by(jobs.c.priority.desc(), deliveries.c.due_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == row.id)
                .values(
                    state=DeliveryState.SENDING,
                    lease_owner=owner,
                    due_at=now + lease_seconds,
                    attempts=deliveries.c.attempts + 1,
                    updated_at=now,
                )
            )
            claimed = conn.execute(select(deliveries).where(deliveries.c.id == row.id)).one()
        return _delivery(claimed, row.result_relpath)

    def confirm(
        self,
        delivery_id: str,
        owner: str,
        sop_instance_uids: Sequence[str],
        now: float,
        lease_seconds: float,
    ) -> bool:
        """Record instances the destination confirmed, and extend the lease; False when
        `owner` no longer holds the delivery."""
        with self.index.write_transaction() as conn:
            row = conn.execute(
                select(deliveries.c.confirmed).where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.lease_owner == owner,
                    deliveries.c.state == DeliveryState.SENDING,
                )
            ).first()
            if row is None:
                return False
            confirmed = list(json.loads(row.confirmed)) if row.confirmed else []
            confirmed.extend(uid for uid in sop_instance_uids if uid not in confirmed)
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(confirmed=json.dumps(confirmed), due_at=now + lease_seconds)
            )
        return True

    def succeed(
        self, delivery_id: str, owner: str, now: float, detail: dict[str, Any]
    ) -> JobState | None:
        """Mark the delivery delivered; return the job's state now (None: lease lost)."""
        with self.index.write_transaction() as conn:
            row = self._held(conn, delivery_id, owner)
            if row is None:
                return None
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(
                    state=DeliveryState.DELIVERED,
                    lease_owner=None,
                    reason=None,
                    delivered_at=now,
                    updated_at=now,
                )
            )
            _event(
                conn,
                now,
                "delivered",
                row,
                {"destination": row.destination, "attempt": row.attempts, **detail},
            )
            return _settle_job(conn, row.job_id, now)

    def retry_later(
        self,
        delivery_id: str,
        owner: str,
        reason: str,
        now: float,
        delay_seconds: float,
        max_age_seconds: float,
    ) -> DeliveryState | None:
        """After a failed attempt: pending again after the delay, or failed (the dead
        letter) once the delivery has been tried for `max_age_seconds`. Return the new
        state (None: lease lost)."""
        with self.index.write_transaction() as conn:
            row = self._held(conn, delivery_id, owner)
            if row is None:
                return None
            if now + delay_seconds - row.started_at > max_age_seconds:
                final = (
                    f"gave up after {row.attempts} attempts over {_duration(now - row.started_at)} "
                    f"(delivery.max_age_hours); last error: {reason}"
                )
                self._fail(conn, row, final, now)
                return DeliveryState.FAILED
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(
                    state=DeliveryState.PENDING,
                    lease_owner=None,
                    reason=reason,
                    due_at=now + delay_seconds,
                    updated_at=now,
                )
            )
            _event(
                conn,
                now,
                "delivery_retry",
                row,
                {
                    "destination": row.destination,
                    "attempt": row.attempts,
                    "reason": reason,
                    "delay_seconds": round(delay_seconds, 1),
                },
            )
            _settle_job(conn, row.job_id, now)
            return DeliveryState.PENDING

    def give_up(self, delivery_id: str, owner: str | None, reason: str, now: float) -> bool:
        """Fail the delivery now (retrying cannot help); False when not held/under way."""
        with self.index.write_transaction() as conn:
            condition = and_(deliveries.c.id == delivery_id, deliveries.c.state.in_(_UNDER_WAY))
            if owner is not None:
                condition = and_(condition, deliveries.c.lease_owner == owner)
            row = conn.execute(select(deliveries).where(condition)).first()
            if row is None:
                return False
            self._fail(conn, row, reason, now)
            return True

    def fail_unknown_destinations(self, known: Sequence[str], now: float) -> int:
        """Fail deliveries under way to destinations the configuration no longer has."""
        unknown = and_(
            deliveries.c.state.in_(_UNDER_WAY), deliveries.c.destination.not_in(list(known))
        )
        with self.index.read_transaction() as conn:  # polled often: an idle poll only reads
            if conn.execute(select(deliveries.c.id).where(unknown).limit(1)).first() is None:
                return 0
        with self.index.write_transaction() as conn:
            rows = conn.execute(select(deliveries).where(unknown)).all()
            for row in rows:
                reason = (
                    f"destination {row.destination!r} is not configured; add it back under "
                    "destinations, then radnode retry the job (a changed send_to applies to "
                    "new jobs only)"
                )
                self._fail(conn, row, reason, now)
        return len(rows)

    def release_orphans(self, host: str, now: float) -> int:
        """Put back deliveries left `sending` by an exporter on this host that died
        (kill -9), so that they go on at once instead of after their lease."""
        released = 0
        with self.index.write_transaction() as conn:
            rows = conn.execute(
                select(deliveries).where(
                    deliveries.c.state == DeliveryState.SENDING,
                    deliveries.c.lease_owner.startswith(f"{host}:", autoescape=True),
                )
            ).all()
            for row in rows:
                if not owner_is_gone(row.lease_owner, host):
                    continue
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == row.id)
                    .values(state=DeliveryState.PENDING, lease_owner=None, due_at=now)
                )
                _event(
                    conn,
                    now,
                    "delivery_resumed",
                    row,
                    {"destination": row.destination, "reason": "the node stopped mid-delivery"},
                )
                released += 1
        return released

    def retry_job(self, job_id: str, now: float) -> int:
        """Put a failed job's failed deliveries back (fresh attempts and maximum age);
        return how many. The job is delivering again."""
        with self.index.write_transaction() as conn:
            rows = conn.execute(
                select(deliveries).where(
                    deliveries.c.job_id == job_id, deliveries.c.state == DeliveryState.FAILED
                )
            ).all()
            for row in rows:
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == row.id)
                    .values(
                        state=DeliveryState.PENDING,
                        attempts=0,
                        due_at=now,
                        started_at=now,
                        lease_owner=None,
                        updated_at=now,
                    )
                )
                _event(conn, now, "delivery_retry_requested", row, {"destination": row.destination})
            if rows:
                _settle_job(conn, job_id, now)
        return len(rows)

    def for_job(self, job_id: str) -> list[Delivery]:
        """The job's deliveries, by destination name."""
        with self.index.read_transaction() as conn:
            rows = conn.execute(
                select(deliveries)
                .where(deliveries.c.job_id == job_id)
                .order_by(deliveries.c.destination)
            ).all()
        return [_delivery(row) for row in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """How many deliveries each (destination, state) has."""
        with self.index.read_transaction() as conn:
            rows = conn.execute(
                select(deliveries.c.destination, deliveries.c.state, func.count()).group_by(
                    deliveries.c.destination, deliveries.c.state
                )
            ).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def next_due(self, destination: str) -> float | None:
        """When the next delivery to `destination` is due (None: nothing under way)."""
        with self.index.read_transaction() as conn:
            value = conn.execute(
                select(func.min(deliveries.c.due_at)).where(
                    deliveries.c.destination == destination,
                    or_(*(deliveries.c.state == s for s in _UNDER_WAY)),
                )
            ).scalar()
        return float(value) if value is not None else None

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _held(conn: Connection, delivery_id: str, owner: str) -> Any:
        return conn.execute(
            select(deliveries).where(
                deliveries.c.id == delivery_id,
                deliveries.c.lease_owner == owner,
                deliveries.c.state == DeliveryState.SENDING,
            )
        ).first()

    @staticmethod
    def _fail(conn: Connection, row: Any, reason: str, now: float) -> None:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == row.id)
            .values(state=DeliveryState.FAILED, lease_owner=None, reason=reason, updated_at=now)
        )
        _event(
            conn,
            now,
            "delivery_failed",
            row,
            {"destination": row.destination, "attempts": row.attempts, "reason": reason},
        )
        _settle_job(conn, row.job_id, now)
