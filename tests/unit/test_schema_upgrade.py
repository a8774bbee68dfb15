"""Upgrading in place: an index written by the previous release gains the columns
added since, with defaults for the rows already there, once and in one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from node.domain import JobState
from node.store import InstanceIndex, JobQueue
from node.store.index import SchemaUpgradeError

STUDY = "1.2.826.0.1.3680043.8.498.100"
SERIES = "1.2.826.0.1.3680043.8.498.100.1"
JOB_ID = "5f0c6b1e-8f0a-4d4e-9d8e-2b7a3c1d0e01"
NEW_COLUMNS = [
    ("series", "routed_generation"),
    ("jobs", "generation"),
    ("jobs", "send_to"),
    ("jobs", "result_relpath"),
]

# The tables as the previous release (0adf9bb) created them on SQLite; the instances
# and events tables have not changed since and are left to create_all.
OLD_STUDIES = """
CREATE TABLE studies (
    study_uid VARCHAR(64) NOT NULL,
    state VARCHAR(16) NOT NULL,
    source VARCHAR(64),
    instance_count INTEGER NOT NULL,
    first_received_at FLOAT NOT NULL,
    last_received_at FLOAT NOT NULL,
    completed_at FLOAT,
    study_date VARCHAR(8),
    study_description VARCHAR(64),
    patient_name VARCHAR(324),
    patient_id VARCHAR(64),
    PRIMARY KEY (study_uid)
)"""
OLD_SERIES = """
CREATE TABLE series (
    series_uid VARCHAR(64) NOT NULL,
    study_uid VARCHAR(64) NOT NULL,
    state VARCHAR(16) NOT NULL,
    generation INTEGER NOT NULL,
    source VARCHAR(64),
    modality VARCHAR(16),
    series_number INTEGER,
    series_description VARCHAR(64),
    body_part VARCHAR(16),
    instance_count INTEGER NOT NULL,
    first_received_at FLOAT NOT NULL,
    last_received_at FLOAT NOT NULL,
    completed_at FLOAT,
    PRIMARY KEY (series_uid),
    FOREIGN KEY(study_uid) REFERENCES studies (study_uid)
)"""
OLD_JOBS_COLUMNS = [
    "id VARCHAR(36) NOT NULL",
    "study_uid VARCHAR(64) NOT NULL",
    "series_uid VARCHAR(64) NOT NULL",
    "route VARCHAR(64) NOT NULL",
    "model VARCHAR(64) NOT NULL",
    "state VARCHAR(16) NOT NULL",
    "reason TEXT",
    "priority INTEGER NOT NULL",
    "attempts INTEGER NOT NULL",
    "lease_owner VARCHAR(64)",
    "lease_expires_at FLOAT",
    "created_at FLOAT NOT NULL",
    "updated_at FLOAT NOT NULL",
]
OLD_INDEXES = [
    "CREATE INDEX ix_series_state ON series (state, last_received_at)",
    "CREATE INDEX ix_series_study ON series (study_uid)",
    "CREATE INDEX ix_jobs_state ON jobs (state, priority)",
]


def make_old_index(path: Path, jobs_columns: list[str] = OLD_JOBS_COLUMNS) -> str:
    """A database as the previous release left it: a complete series and a pending job."""
    jobs_table = f"CREATE TABLE jobs ({', '.join([*jobs_columns, 'PRIMARY KEY (id)'])})"
    with sqlite3.connect(path) as db:
        for statement in [OLD_STUDIES, OLD_SERIES, jobs_table, *OLD_INDEXES]:
            db.execute(statement)
        db.execute(
            "INSERT INTO studies (study_uid, state, source, instance_count, "
            "first_received_at, last_received_at, completed_at) "
            "VALUES (?, 'complete', 'pacs', 3, 1000.0, 1010.0, 1100.0)",
            (STUDY,),
        )
        db.execute(
            "INSERT INTO series (series_uid, study_uid, state, generation, source, modality, "
            "series_number, series_description, body_part, instance_count, "
            "first_received_at, last_received_at, completed_at) "
            "VALUES (?, ?, 'complete', 1, 'pacs', 'CT', 2, 'Thorax', 'CHEST', 3, "
            "1000.0, 1010.0, 1070.0)",
            (SERIES, STUDY),
        )
        old_names = [c.split()[0] for c in jobs_columns]
        row: dict[str, Any] = {
            "id": JOB_ID,
            "study_uid": STUDY,
            "series_uid": SERIES,
            "route": "chest",
            "model": "lung-nodules",
            "state": "pending",
            "priority": 5,
            "attempts": 0,
            "created_at": 1080.0,
            "updated_at": 1080.0,
        }
        names = [n for n in row if n in old_names]
        db.execute(
            f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",  # noqa: S608
            [row[n] for n in names],
        )
    db.close()
    return f"sqlite:///{path}"


def table_info(path: Path, table: str) -> dict[str, tuple[str, int, str | None]]:
    """Each column's (type, NOT NULL, default) as SQLite reports them."""
    with sqlite3.connect(path) as db:
        rows = db.execute(f"PRAGMA table_info({table})").fetchall()
    db.close()
    return {r[1]: (r[2], r[3], r[4]) for r in rows}


def schema_sql(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    db.close()
    return rows


def added_columns(logs: Iterable[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    return [(e["table"], e["column"]) for e in logs if e["event"] == "schema_column_added"]


def test_old_index_gains_the_new_columns_with_defaults_for_old_rows(tmp_path: Path) -> None:
    # Given an index written by the previous release
    path = tmp_path / "index.sqlite3"
    url = make_old_index(path)

    # When this release opens it
    with capture_logs() as logs:
        index = InstanceIndex(url)

    # Then each new column is added once, with its type and default, and logged
    assert sorted(added_columns(logs)) == sorted(NEW_COLUMNS)
    assert table_info(path, "series")["routed_generation"] == ("INTEGER", 1, "'0'")
    jobs_info = table_info(path, "jobs")
    assert jobs_info["generation"] == ("INTEGER", 1, "'1'")
    assert jobs_info["send_to"] == ("TEXT", 0, None)
    assert jobs_info["result_relpath"] == ("VARCHAR(255)", 0, None)
    # and the old rows read with the defaults; a series the old release completed
    # counts as routed (it had no routes), so no model runs on past studies
    queue = JobQueue(index)
    assert queue.series_to_route() == []
    with index.read_transaction() as conn:
        routed = conn.exec_driver_sql("SELECT routed_generation FROM series").scalar_one()
    assert routed == 1
    job = queue.get(JOB_ID)
    assert job is not None
    assert (job.state, job.generation, job.send_to, job.result_relpath) == (
        JobState.PENDING,
        1,
        (),
        None,
    )
    index.close()

    # When it is opened again, nothing more is added
    with capture_logs() as logs:
        InstanceIndex(url).close()
    assert added_columns(logs) == []


def test_current_index_is_left_unchanged(tmp_path: Path) -> None:
    # Given an index created by this release
    path = tmp_path / "index.sqlite3"
    url = f"sqlite:///{path}"
    with capture_logs() as logs:
        InstanceIndex(url).close()
    assert added_columns(logs) == []
    before = schema_sql(path)

    # When it is opened again, neither the schema changes nor a column is logged
    with capture_logs() as logs:
        InstanceIndex(url).close()
    assert added_columns(logs) == []
    assert schema_sql(path) == before


def test_missing_not_null_column_without_default_is_refused_and_nothing_added(
    tmp_path: Path,
) -> None:
    # Given an old index whose jobs table also lacks created_at (NOT NULL, no default)
    path = tmp_path / "index.sqlite3"
    old_jobs = [c for c in OLD_JOBS_COLUMNS if not c.startswith("created_at")]
    url = make_old_index(path, old_jobs)
    before = [table_info(path, "series"), table_info(path, "jobs")]

    # When this release opens it, it refuses with a message that says what to do
    with capture_logs() as logs, pytest.raises(SchemaUpgradeError, match=r"jobs\.created_at"):
        InstanceIndex(url)

    # and the columns it could add are not added either: one transaction
    assert added_columns(logs) == []
    assert [table_info(path, "series"), table_info(path, "jobs")] == before
