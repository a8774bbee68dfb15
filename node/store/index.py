"""The SQL index over received instances, with the events that change it.

Each public method is one transaction. On SQLite, write transactions start with
BEGIN IMMEDIATE so that concurrent writers (several listener processes, the
assembly sweep) queue on the busy timeout instead of failing on a lock upgrade.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    exists,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.schema import CreateColumn

from node.domain import InstanceHeader, SeriesState, StoreOutcome, StudyState
from node.errors import ConfigError, InvalidInput, StorageFull
from node.store.schema import events, instances, metadata, series, studies

log = structlog.get_logger("radnode.store")

SQLITE_BUSY_TIMEOUT_MS = 30_000

WriteLock = AbstractContextManager[Any]

# The statements on the per-instance path, built once: building a statement costs
# more than executing it (SQLAlchemy compiles and caches by the statement's shape).
_FIND_INSTANCE = select(instances.c.relpath, instances.c.sha256, instances.c.version).where(
    instances.c.sop_instance_uid == bindparam("sop_uid")
)
_INSERT_INSTANCE = insert(instances)
_REFRESH_STUDY = (
    update(studies)
    .where(studies.c.study_uid == bindparam("uid"), studies.c.state == StudyState.RECEIVING)
    .values(
        instance_count=studies.c.instance_count + bindparam("added"),
        last_received_at=bindparam("now"),
    )
)
_REFRESH_SERIES = (
    update(series)
    .where(series.c.series_uid == bindparam("uid"), series.c.state == SeriesState.RECEIVING)
    .values(
        instance_count=series.c.instance_count + bindparam("added"),
        last_received_at=bindparam("now"),
    )
)


class _Prepared:
    """A statement compiled once for one dialect, run on a raw DBAPI cursor.

    The per-instance path spends more time in SQLAlchemy's execution machinery than
    in the database; this keeps the SQL portable (compiled by SQLAlchemy for the
    dialect in use) while skipping that machinery.
    """

    def __init__(self, statement: Any, dialect: Any) -> None:
        self._compiled = statement.compile(dialect=dialect)
        self.sql = str(self._compiled)
        self._order = list(self._compiled.positiontup or [])

    def params(self, values: dict[str, Any]) -> Any:
        merged = self._compiled.construct_params(values)
        return tuple(merged[name] for name in self._order) if self._order else merged


@dataclass(frozen=True, slots=True)
class IndexedInstance:
    """What the index knows of one stored instance."""

    sop_instance_uid: str
    relpath: str
    sha256: str
    version: int


@dataclass(frozen=True, slots=True)
class RecordedInstance:
    """What recording an instance changed in the index."""

    outcome: StoreOutcome
    version: int
    new_series: bool
    reopened_series: bool
    previous_sha256: str | None


@dataclass(frozen=True, slots=True)
class CompletedUnit:
    """A series or study that has just been marked complete."""

    study_uid: str
    series_uid: str | None
    instance_count: int
    generation: int


@dataclass(frozen=True, slots=True)
class ReceivingSeries:
    """A series still receiving, as completeness queries see it."""

    study_uid: str
    series_uid: str
    source: str
    instance_count: int
    generation: int


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """A series as `radnode studies` shows it."""

    series_uid: str
    state: str
    generation: int
    modality: str
    series_number: int | None
    series_description: str
    instance_count: int
    last_received_at: float
    completed_at: float | None


@dataclass(frozen=True, slots=True)
class StudySummary:
    """A study as `radnode studies` shows it; patient fields are for --show-phi only."""

    study_uid: str
    state: str
    source: str
    instance_count: int
    first_received_at: float
    last_received_at: float
    completed_at: float | None
    study_date: str
    study_description: str
    patient_name: str
    patient_id: str
    series: tuple[SeriesSummary, ...]


class SchemaUpgradeError(ConfigError):
    """The index database lacks a column that cannot be added in place."""


def upgrade_schema(engine: Engine) -> list[tuple[str, str]]:
    """Add the columns of `metadata` that the database's existing tables lack.

    `metadata.create_all` creates missing tables but never alters existing ones, so
    an index written by an older release would lack the columns added since. Each
    missing column is added with its type compiled for the engine's dialect and its
    server default (which fills the rows already there), all in one transaction:
    either every column is added or none. On a current database this is one column
    listing per table. Returns the (table, column) pairs added.
    """
    added: list[tuple[str, str]] = []
    preparer = engine.dialect.identifier_preparer
    with engine.begin() as conn:
        inspector = inspect(conn)
        for table in metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                _check_addable(table.name, column)
                spec = CreateColumn(column).compile(dialect=engine.dialect)
                conn.exec_driver_sql(
                    f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {spec}"
                )
                added.append((table.name, column.name))
                if (table.name, column.name) == ("series", "routed_generation"):
                    # A release without routing knew no routes: its complete series
                    # count as routed, so that an upgrade does not run today's models
                    # on every past study and send results for them.
                    conn.execute(update(series).values(routed_generation=series.c.generation))
    for table_name, column_name in added:
        log.info("schema_column_added", table=table_name, column=column_name)
    return added


def _check_addable(table: str, column: Column[Any]) -> None:
    """Refuse a column that ALTER TABLE ADD COLUMN cannot add to rows already there."""
    problem = None
    if column.primary_key:
        problem = "is part of the primary key"
    elif column.foreign_keys:
        problem = "has a foreign key"
    elif not column.nullable and column.server_default is None:
        problem = "is NOT NULL without a server default"
    if problem:
        raise SchemaUpgradeError(
            f"the index database lacks column {table}.{column.name}, which {problem}, so "
            "it cannot be added in place; add it by hand (ALTER TABLE ... ADD COLUMN, with a "
            "value for the rows already there) before starting this version"
        )


def _make_engine(url: str, begin: str) -> Engine:
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if is_sqlite
        else {},
    )
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of the process (kill -9)
            # but may be lost in a power cut. Acknowledged instances stay safe either
            # way: their files are fsynced before the commit, and the start-up scan
            # indexes any file the index lacks. FULL would add an fsync per instance.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(begin)

    return engine


class InstanceIndex:
    """Studies, series, instances and events in SQL."""

    def __init__(self, url: str, write_lock: WriteLock | None = None) -> None:
        self.url = url
        self._writer = _make_engine(url, "BEGIN IMMEDIATE")
        self._reader = _make_engine(url, "BEGIN")
        # SQLite lets one writer in at a time and makes the others poll with growing
        # sleeps (1, 2, 5, 10 ms...). Queuing writers of all listener processes on one
        # lock instead keeps each wait as short as the write in front of it.
        is_sqlite = url.startswith("sqlite")
        self._write_lock: WriteLock = (
            write_lock if write_lock is not None and is_sqlite else nullcontext()
        )
        # An index written by an older release gains the columns added since.
        with self._write_lock:
            metadata.create_all(self._writer)
            upgrade_schema(self._writer)
        # The per-instance fast path: one raw connection per process, used under a
        # thread lock (SQLite admits one writer at a time anyway).
        dialect = self._writer.dialect
        self._fast_find = _Prepared(_FIND_INSTANCE, dialect)
        self._fast_study = _Prepared(_REFRESH_STUDY, dialect)
        self._fast_series = _Prepared(_REFRESH_SERIES, dialect)
        self._fast_insert = _Prepared(
            _INSERT_INSTANCE.values({c.name: bindparam(c.name) for c in instances.columns}),
            dialect,
        )
        self._fast_begin = "BEGIN IMMEDIATE" if is_sqlite else None
        self._fast_lock = threading.Lock()
        self._fast_conn: Any = None

    def close(self) -> None:
        """Release database connections."""
        with self._fast_lock:
            if self._fast_conn is not None:
                self._fast_conn.close()
                self._fast_conn = None
        self._writer.dispose()
        self._reader.dispose()

    def write_transaction(self) -> AbstractContextManager[Connection]:
        """One write transaction, queued behind other writers (for the job queue)."""
        return self._write()

    def read_transaction(self) -> AbstractContextManager[Connection]:
        """One read transaction."""
        return self._read()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._write_lock, self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._reader.begin() as conn:
            yield conn

    # -- instances -------------------------------------------------------------------

    def find_instance(self, sop_instance_uid: str) -> IndexedInstance | None:
        """The indexed instance with this SOP Instance UID, if any."""
        with self._read() as conn:
            row = conn.execute(_FIND_INSTANCE, {"sop_uid": sop_instance_uid}).first()
        if row is None:
            return None
        return IndexedInstance(sop_instance_uid, row.relpath, row.sha256, row.version)

    def record_instance(
        self,
        header: InstanceHeader,
        *,
        relpath: str,
        size: int,
        sha256: str,
        source: str | None,
        calling_ae: str | None,
        now: float,
        present: Callable[[], bool] | None = None,
    ) -> RecordedInstance:
        """Index an instance whose file is already durable; update its series and study.

        `present` says whether the file is still there, asked under the write lock on
        the path that a complete study takes: a retention purge of that study (under
        the same lock) may have removed it, and then the sender is told to retry.
        """
        new_row = _instance_row(header, relpath, size, sha256, source, calling_ae, now)
        if self._record_new_instance_fast(header, new_row):
            return RecordedInstance(StoreOutcome.STORED, 1, False, False, None)
        with self._write() as conn:
            if present is not None and not present():
                raise StorageFull(
                    f"SOPInstanceUID {header.sop_instance_uid}: its study was being purged "
                    "by retention as it arrived; send it again"
                )
            row = conn.execute(_FIND_INSTANCE, {"sop_uid": header.sop_instance_uid}).first()
            if row is not None and row.relpath != relpath:
                raise InvalidInput(
                    f"SOPInstanceUID {header.sop_instance_uid} was received before in "
                    f"{row.relpath.rsplit('/', 1)[0]} (study/series); a SOP instance cannot "
                    "move to another series"
                )
            if row is not None and row.sha256 == sha256:
                return RecordedInstance(StoreOutcome.DUPLICATE, row.version, False, False, None)
            new_series, reopened = self._touch_series(conn, header, source, now, row is None)
            if row is None:
                conn.execute(_INSERT_INSTANCE, new_row)
                return RecordedInstance(StoreOutcome.STORED, 1, new_series, reopened, None)
            version = row.version + 1
            conn.execute(
                update(instances)
                .where(instances.c.sop_instance_uid == header.sop_instance_uid)
                .values(
                    sop_class_uid=header.sop_class_uid,
                    transfer_syntax_uid=header.transfer_syntax_uid,
                    size_bytes=size,
                    sha256=sha256,
                    version=version,
                    source=source,
                    calling_ae=calling_ae,
                    received_at=now,
                )
            )
            _add_event(
                conn,
                now,
                "instance_replaced",
                header,
                {"version": version, "previous_sha256": row.sha256, "sha256": sha256},
            )
            return RecordedInstance(
                StoreOutcome.NEW_VERSION, version, new_series, reopened, row.sha256
            )

    def _record_new_instance_fast(self, header: InstanceHeader, new_row: dict[str, Any]) -> bool:
        """The common case in one raw transaction: a new instance of a receiving series.

        Returns False, having changed nothing, when the case is any other (known
        instance, new or complete series or study); the caller then takes the full path.
        """
        refresh = {"added": 1, "now": new_row["received_at"]}
        with self._write_lock, self._fast_lock:
            if self._fast_conn is None:
                self._fast_conn = self._writer.raw_connection()
            conn = self._fast_conn
            cursor = conn.cursor()
            try:
                if self._fast_begin:
                    cursor.execute(self._fast_begin)
                cursor.execute(
                    self._fast_find.sql,
                    self._fast_find.params({"sop_uid": header.sop_instance_uid}),
                )
                common = cursor.fetchone() is None
                if common:
                    cursor.execute(
                        self._fast_study.sql,
                        self._fast_study.params({"uid": header.study_uid, **refresh}),
                    )
                    common = cursor.rowcount == 1
                if common:
                    cursor.execute(
                        self._fast_series.sql,
                        self._fast_series.params({"uid": header.series_uid, **refresh}),
                    )
                    common = cursor.rowcount == 1
                if not common:
                    conn.rollback()
                    return False
                cursor.execute(
                    self._fast_insert.sql,
                    self._fast_insert.params(new_row),
                )
                conn.commit()
                return True
            except BaseException:
                conn.rollback()
                raise
            finally:
                cursor.close()

    def _touch_series(
        self,
        conn: Connection,
        header: InstanceHeader,
        source: str | None,
        now: float,
        is_new_instance: bool,
    ) -> tuple[bool, bool]:
        """Create or refresh the series and study rows; reopen them if complete.

        The common case (more instances for a receiving series) is one UPDATE each;
        the rarer cases (first instance, instance after completion) read the state.
        Returns (series is new, series was reopened).
        """
        added = 1 if is_new_instance else 0
        refreshed = conn.execute(
            _REFRESH_STUDY, {"uid": header.study_uid, "added": added, "now": now}
        )
        if refreshed.rowcount == 0:
            self._open_study(conn, header, source, now, added)

        refreshed = conn.execute(
            _REFRESH_SERIES, {"uid": header.series_uid, "added": added, "now": now}
        )
        if refreshed.rowcount == 1:
            return False, False
        current = conn.execute(
            select(series.c.generation).where(series.c.series_uid == header.series_uid)
        ).first()
        if current is None:
            conn.execute(
                insert(series).values(
                    series_uid=header.series_uid,
                    study_uid=header.study_uid,
                    state=SeriesState.RECEIVING,
                    generation=1,
                    source=source,
                    modality=header.modality[:16],
                    series_number=header.series_number,
                    series_description=header.series_description[:64],
                    body_part=header.body_part[:16],
                    instance_count=added,
                    first_received_at=now,
                    last_received_at=now,
                )
            )
            _add_event(conn, now, "series_opened", header, {"source": source})
            return True, False
        generation = current.generation + 1
        conn.execute(
            update(series)
            .where(series.c.series_uid == header.series_uid)
            .values(
                state=SeriesState.RECEIVING,
                generation=generation,
                completed_at=None,
                instance_count=series.c.instance_count + added,
                last_received_at=now,
            )
        )
        _add_event(conn, now, "series_reopened", header, {"generation": generation})
        return False, True

    def _open_study(
        self, conn: Connection, header: InstanceHeader, source: str | None, now: float, added: int
    ) -> None:
        """Insert a new study row, or reopen a complete one."""
        exists_already = conn.execute(
            select(studies.c.state).where(studies.c.study_uid == header.study_uid)
        ).first()
        if exists_already is None:
            conn.execute(
                insert(studies).values(
                    study_uid=header.study_uid,
                    state=StudyState.RECEIVING,
                    source=source,
                    instance_count=added,
                    first_received_at=now,
                    last_received_at=now,
                    study_date=header.study_date[:8],
                    study_description=header.study_description[:64],
                    patient_name=header.patient_name[:324],
                    patient_id=header.patient_id[:64],
                )
            )
            return
        conn.execute(
            update(studies)
            .where(studies.c.study_uid == header.study_uid)
            .values(
                state=StudyState.RECEIVING,
                completed_at=None,
                instance_count=studies.c.instance_count + added,
                last_received_at=now,
                # A study purged by retention and sent again gets its attributes back.
                patient_name=func.coalesce(studies.c.patient_name, header.patient_name[:324]),
                patient_id=func.coalesce(studies.c.patient_id, header.patient_id[:64]),
                study_description=func.coalesce(
                    studies.c.study_description, header.study_description[:64]
                ),
            )
        )
        _add_event(conn, now, "study_reopened", header, None, series_level=False)

    def indexed_relpaths(self) -> set[str]:
        """Every relative path the index knows."""
        with self._read() as conn:
            return set(conn.execute(select(instances.c.relpath)).scalars())

    # -- completeness ----------------------------------------------------------------

    def complete_quiet_series(self, quiet_before: float, now: float) -> list[CompletedUnit]:
        """Mark complete every receiving series with no instance since `quiet_before`."""
        done: list[CompletedUnit] = []
        with self._write() as conn:
            rows = conn.execute(
                select(
                    series.c.series_uid,
                    series.c.study_uid,
                    series.c.instance_count,
                    series.c.generation,
                ).where(
                    series.c.state == SeriesState.RECEIVING,
                    series.c.last_received_at <= quiet_before,
                )
            ).all()
            for row in rows:
                conn.execute(
                    update(series)
                    .where(series.c.series_uid == row.series_uid)
                    .values(state=SeriesState.COMPLETE, completed_at=now)
                )
                conn.execute(
                    insert(events).values(
                        at=now,
                        kind="series_complete",
                        study_uid=row.study_uid,
                        series_uid=row.series_uid,
                        detail=json.dumps(
                            {"instances": row.instance_count, "generation": row.generation}
                        ),
                    )
                )
                done.append(
                    CompletedUnit(row.study_uid, row.series_uid, row.instance_count, row.generation)
                )
        return done

    def receiving_series(self, sources: Sequence[str]) -> list[ReceivingSeries]:
        """Series still receiving from the given sources, with their instance counts."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    series.c.study_uid,
                    series.c.series_uid,
                    series.c.source,
                    series.c.instance_count,
                    series.c.generation,
                ).where(series.c.state == SeriesState.RECEIVING, series.c.source.in_(list(sources)))
            ).all()
        return [
            ReceivingSeries(r.study_uid, r.series_uid, r.source, r.instance_count, r.generation)
            for r in rows
        ]

    def complete_counted_series(
        self, series_uid: str, generation: int, expected: int, now: float
    ) -> CompletedUnit | None:
        """Mark a series complete because it holds the `expected` instances its sender
        reported; None when it is no longer receiving, changed generation, or is short."""
        with self._write() as conn:
            row = conn.execute(
                select(series.c.study_uid, series.c.instance_count).where(
                    series.c.series_uid == series_uid,
                    series.c.state == SeriesState.RECEIVING,
                    series.c.generation == generation,
                    series.c.instance_count >= expected,
                )
            ).first()
            if row is None:
                return None
            conn.execute(
                update(series)
                .where(series.c.series_uid == series_uid)
                .values(state=SeriesState.COMPLETE, completed_at=now)
            )
            conn.execute(
                insert(events).values(
                    at=now,
                    kind="series_complete",
                    study_uid=row.study_uid,
                    series_uid=series_uid,
                    detail=json.dumps(
                        {
                            "instances": row.instance_count,
                            "generation": generation,
                            "by": "count from the sender (C-FIND)",
                            "expected": expected,
                        }
                    ),
                )
            )
        return CompletedUnit(row.study_uid, series_uid, row.instance_count, generation)

    def complete_quiet_studies(self, quiet_before: float, now: float) -> list[CompletedUnit]:
        """Mark complete every receiving study that is quiet and has no receiving series."""
        open_series = exists().where(
            and_(series.c.study_uid == studies.c.study_uid, series.c.state == SeriesState.RECEIVING)
        )
        done: list[CompletedUnit] = []
        with self._write() as conn:
            rows = conn.execute(
                select(studies.c.study_uid, studies.c.instance_count).where(
                    studies.c.state == StudyState.RECEIVING,
                    studies.c.last_received_at <= quiet_before,
                    ~open_series,
                )
            ).all()
            for row in rows:
                conn.execute(
                    update(studies)
                    .where(studies.c.study_uid == row.study_uid)
                    .values(state=StudyState.COMPLETE, completed_at=now)
                )
                conn.execute(
                    insert(events).values(
                        at=now,
                        kind="study_complete",
                        study_uid=row.study_uid,
                        detail=json.dumps({"instances": row.instance_count}),
                    )
                )
                done.append(CompletedUnit(row.study_uid, None, row.instance_count, 1))
        return done

    # -- events and listings ---------------------------------------------------------

    def add_event(
        self,
        kind: str,
        *,
        now: float,
        study_uid: str | None = None,
        series_uid: str | None = None,
        job_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one event to the log (no patient data in `detail`)."""
        with self._write() as conn:
            conn.execute(
                insert(events).values(
                    at=now,
                    kind=kind,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    job_id=job_id,
                    detail=json.dumps(detail) if detail else None,
                )
            )

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events in the order they happened, optionally of one kind."""
        query = select(events).order_by(events.c.id)
        if kind:
            query = query.where(events.c.kind == kind)
        with self._read() as conn:
            return [
                {**row._asdict(), "detail": json.loads(row.detail) if row.detail else None}
                for row in conn.execute(query)
            ]

    def events_after(
        self, after_id: int, kinds: Sequence[str], limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Events of the given kinds with an id above `after_id`, oldest first (for
        readers that follow the log, such as the metrics)."""
        query = (
            select(events)
            .where(events.c.id > after_id, events.c.kind.in_(list(kinds)))
            .order_by(events.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [
                {**row._asdict(), "detail": json.loads(row.detail) if row.detail else None}
                for row in conn.execute(query)
            ]

    def counts(self, column: str) -> dict[str, int]:
        """How many rows each value of `column` has, for instances.source, jobs.state
        and the like ("table.column")."""
        table_name, _, column_name = column.partition(".")
        table = metadata.tables[table_name]
        col = table.c[column_name]
        with self._read() as conn:
            rows = conn.execute(select(col, func.count()).group_by(col)).all()
        return {str(value) if value is not None else "": int(n) for value, n in rows}

    def count_instances(self) -> int:
        """How many instances the index holds."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(instances)).scalar_one())

    def list_studies(self, limit: int = 100) -> list[StudySummary]:
        """The most recently active studies with their series."""
        with self._read() as conn:
            study_rows = conn.execute(
                select(studies)
                .where(studies.c.instance_count > 0)  # 0: purged by retention
                .order_by(studies.c.last_received_at.desc())
                .limit(limit)
            ).all()
            uids = [r.study_uid for r in study_rows]
            series_rows = (
                conn.execute(
                    select(series)
                    .where(series.c.study_uid.in_(uids))
                    .order_by(series.c.series_number, series.c.first_received_at)
                ).all()
                if uids
                else []
            )
        by_study: dict[str, list[SeriesSummary]] = {}
        for s in series_rows:
            by_study.setdefault(s.study_uid, []).append(
                SeriesSummary(
                    series_uid=s.series_uid,
                    state=s.state,
                    generation=s.generation,
                    modality=s.modality or "",
                    series_number=s.series_number,
                    series_description=s.series_description or "",
                    instance_count=s.instance_count,
                    last_received_at=s.last_received_at,
                    completed_at=s.completed_at,
                )
            )
        return [
            StudySummary(
                study_uid=r.study_uid,
                state=r.state,
                source=r.source or "",
                instance_count=r.instance_count,
                first_received_at=r.first_received_at,
                last_received_at=r.last_received_at,
                completed_at=r.completed_at,
                study_date=r.study_date or "",
                study_description=r.study_description or "",
                patient_name=r.patient_name or "",
                patient_id=r.patient_id or "",
                series=tuple(by_study.get(r.study_uid, [])),
            )
            for r in study_rows
        ]


def _instance_row(
    header: InstanceHeader,
    relpath: str,
    size: int,
    sha256: str,
    source: str | None,
    calling_ae: str | None,
    now: float,
) -> dict[str, Any]:
    """The row of a first version of an instance."""
    return {
        "sop_instance_uid": header.sop_instance_uid,
        "series_uid": header.series_uid,
        "study_uid": header.study_uid,
        "sop_class_uid": header.sop_class_uid,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "relpath": relpath,
        "size_bytes": size,
        "sha256": sha256,
        "version": 1,
        "source": source,
        "calling_ae": calling_ae,
        "received_at": now,
    }


def _add_event(
    conn: Connection,
    now: float,
    kind: str,
    header: InstanceHeader,
    detail: dict[str, Any] | None,
    *,
    series_level: bool = True,
) -> None:
    conn.execute(
        insert(events).values(
            at=now,
            kind=kind,
            study_uid=header.study_uid,
            series_uid=header.series_uid if series_level else None,
            sop_instance_uid=header.sop_instance_uid if kind == "instance_replaced" else None,
            detail=json.dumps(detail) if detail else None,
        )
    )
