"""The SQL index: tables for studies, series, instances, jobs and events.

Portable SQL only (SQLAlchemy Core, no dialect-specific statements), so the same
schema runs on SQLite for one node and on PostgreSQL for several. Times are
seconds since the epoch (UTC) as floats.

Existing databases gain new columns at start-up (`node.store.index.upgrade_schema`),
so a column added after a release must be nullable, or NOT NULL with a
`server_default` that fills the rows already there. Every NOT NULL column with a
Python-side default has the same `server_default`, so any of them can be added.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

UID = String(64)

studies = Table(
    "studies",
    metadata,
    Column("study_uid", UID, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("source", String(64)),
    Column("instance_count", Integer, nullable=False, default=0, server_default="0"),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Column("completed_at", Float),
    Column("study_date", String(8)),
    Column("study_description", String(64)),
    # Patient attributes stay in the index, which lives beside the images; they are
    # shown only by `radnode studies --show-phi` and never logged.
    Column("patient_name", String(324)),
    Column("patient_id", String(64)),
)

series = Table(
    "series",
    metadata,
    Column("series_uid", UID, primary_key=True),
    Column("study_uid", UID, ForeignKey("studies.study_uid"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("generation", Integer, nullable=False, default=1, server_default="1"),
    Column("source", String(64)),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("body_part", String(16)),
    Column("instance_count", Integer, nullable=False, default=0, server_default="0"),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Column("completed_at", Float),
    # The last generation that routing has turned into jobs: a complete series with
    # routed_generation < generation still needs routing (so a crash between
    # completion and routing loses nothing).
    Column("routed_generation", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_series_study", "study_uid"),
    Index("ix_series_state", "state", "last_received_at"),
)

instances = Table(
    "instances",
    metadata,
    Column("sop_instance_uid", UID, primary_key=True),
    Column("series_uid", UID, ForeignKey("series.series_uid"), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("sop_class_uid", UID, nullable=False),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("relpath", String(255), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("version", Integer, nullable=False, default=1, server_default="1"),
    Column("source", String(64)),
    Column("calling_ae", String(16)),
    Column("received_at", Float, nullable=False),
    Index("ix_instances_series", "series_uid"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("study_uid", UID, nullable=False),
    Column("series_uid", UID, nullable=False),
    Column("generation", Integer, nullable=False, default=1, server_default="1"),
    Column("route", String(64), nullable=False),
    Column("model", String(64), nullable=False),
    Column("send_to", Text),  # JSON list of destination names
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("priority", Integer, nullable=False, default=0, server_default="0"),
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", Float),
    Column("result_relpath", String(255)),  # under <root>/results/, once encoded
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_jobs_state", "state", "priority"),
)

# One row per (job, destination): the job's results on their way to that destination.
# Deliveries move on independently, so a dead destination never holds up the others.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("job_id", String(36), ForeignKey("jobs.id"), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("series_uid", UID, nullable=False),
    Column("destination", String(64), nullable=False),
    # pending -> sending -> delivered, or failed (the dead letter: retried by `radnode retry`)
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    # For a pending delivery, "not before" (the retry delay); for a sending one, the lease.
    Column("due_at", Float, nullable=False),
    Column("lease_owner", String(64)),
    Column("reason", Text),
    # JSON list of the SOP instance UIDs the destination has confirmed so far.
    Column("confirmed", Text),
    Column("created_at", Float, nullable=False),
    # When the current round of attempts began: the maximum age counts from here.
    Column("started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("delivered_at", Float),
    Index("ix_deliveries_due", "state", "destination", "due_at"),
    Index("ix_deliveries_job", "job_id"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("study_uid", UID),
    Column("series_uid", UID),
    Column("sop_instance_uid", UID),
    Column("job_id", String(36)),
    # JSON without patient data: counts, reasons, AE titles, digests.
    Column("detail", Text),
    Index("ix_events_kind", "kind", "at"),
)
