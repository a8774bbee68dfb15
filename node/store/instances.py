"""Keep received instances safe: durable file first, index row second, then acknowledge."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from node.domain import InstanceHeader, StoreResult
from node.errors import InvalidInput
from node.store.files import (
    STAGING_DIR,
    check_reserve,
    fsync_file,
    instance_relpath,
    iter_instance_files,
    place_durably,
    remove_partial_files,
    stage_durably,
)
from node.store.header import read_header
from node.store.index import InstanceIndex
from node.store.sealed import read_bytes, seal, sealing

log = structlog.get_logger("radnode.store")


@dataclass(frozen=True, slots=True)
class ReindexReport:
    """What the start-up scan of the storage root found."""

    indexed: int
    unreadable: int
    partial_removed: int


IO_THREADS = 8


def _relpath(header: InstanceHeader) -> str:
    return instance_relpath(header.study_uid, header.series_uid, header.sop_instance_uid)


class InstanceStore:
    """Instances on disk under `root`, indexed in SQL."""

    def __init__(
        self,
        root: Path,
        index: InstanceIndex,
        reserve_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.index = index
        self.reserve_bytes = reserve_bytes
        self._clock = clock
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="store-io")
        root.mkdir(parents=True, exist_ok=True)

    def path_of(self, relpath: str) -> Path:
        """The absolute path of a stored file."""
        return self.root / relpath

    def store_instance(
        self,
        header: InstanceHeader,
        data: bytes,
        *,
        source: str | None = None,
        calling_ae: str | None = None,
    ) -> StoreResult:
        """Store one instance whose header is known, durably, and index it.

        Identical bytes for a known SOP Instance UID are a duplicate and leave the
        index as it was; different bytes replace the file as a new version. Raises
        StorageFull when the disk is below its reserve, with nothing written, and
        InvalidInput when the SOP instance was received before in another series.
        """
        relpath = _relpath(header)
        staged = stage_durably(
            self.path_of(relpath).parent, seal(data), self.reserve_bytes, Path(relpath).name
        )
        return self._place_and_index(
            staged, header, hashlib.sha256(data).hexdigest(), len(data), source, calling_ae
        )

    @property
    def staging_dir(self) -> Path:
        """Where received files are written before they are checked and placed."""
        return self.root / STAGING_DIR

    def receive_file(
        self,
        staged: Path,
        *,
        check: Callable[[InstanceHeader], None] | None = None,
        source: str | None = None,
        calling_ae: str | None = None,
    ) -> tuple[InstanceHeader, StoreResult]:
        """Keep a received Part 10 file written (not yet synced) under `staging_dir`.

        The fsync runs on an I/O thread while this thread reads the header and
        hashes the bytes, so an instance costs about the longer of the two, not
        their sum. `check` may raise InvalidInput to refuse the instance. Raises
        InvalidInput, StorageFull or OSError; then the staged file is removed and
        nothing is indexed.
        """
        if sealing():  # (the listener keeps data sets in memory then; stay safe anyway)
            data = staged.read_bytes()
            staged.unlink(missing_ok=True)
            header = read_header(data)
            if check is not None:
                check(header)
            return header, self.store_instance(header, data, source=source, calling_ae=calling_ae)
        try:
            check_reserve(staged.parent, 0, self.reserve_bytes)  # the bytes are there
            synced = self._io.submit(fsync_file, staged)
            data = staged.read_bytes()
            header = read_header(data)
            if check is not None:
                check(header)
            digest = hashlib.sha256(data).hexdigest()
            synced.result()
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        result = self._place_and_index(staged, header, digest, len(data), source, calling_ae)
        return header, result

    def _place_and_index(
        self,
        staged: Path,
        header: InstanceHeader,
        digest: str,
        size: int,
        source: str | None,
        calling_ae: str | None,
    ) -> StoreResult:
        # File first, index second: a crash in between leaves a file that the
        # start-up scan indexes. A duplicate replaces identical bytes, which is
        # harmless and cheaper than a look-up before every write.
        relpath = _relpath(header)
        place_durably(staged, self.root, relpath)
        try:
            recorded = self.index.record_instance(
                header,
                relpath=relpath,
                size=size,
                sha256=digest,
                source=source,
                calling_ae=calling_ae,
                now=self._clock(),
                present=self.path_of(relpath).exists,
            )
        except InvalidInput:
            self.path_of(relpath).unlink(missing_ok=True)
            raise
        return StoreResult(
            recorded.outcome,
            recorded.version,
            relpath,
            size,
            reopened_series=recorded.reopened_series,
        )

    def close(self) -> None:
        """Stop the I/O threads and release the index."""
        self._io.shutdown(wait=True)
        self.index.close()

    def reindex(self) -> ReindexReport:
        """Index files on disk that the index lacks (a crash between write and commit).

        Temporary files of writes that never finished are removed: they were never
        acknowledged, so their senders still hold them.
        """
        removed = remove_partial_files(self.root)
        known = self.index.indexed_relpaths()
        indexed = unreadable = 0
        for relpath in iter_instance_files(self.root):
            if relpath in known:
                continue
            try:
                data = read_bytes(self.path_of(relpath))
                header = read_header(data)
            except InvalidInput as exc:
                unreadable += 1
                log.warning("reindex_unreadable_file", path=relpath, reason=str(exc))
                continue
            expected = instance_relpath(
                header.study_uid, header.series_uid, header.sop_instance_uid
            )
            if expected != relpath:
                unreadable += 1
                log.warning("reindex_misplaced_file", path=relpath, expected=expected)
                continue
            self.index.record_instance(
                header,
                relpath=relpath,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                source=None,
                calling_ae=None,
                now=self._clock(),
            )
            indexed += 1
        report = ReindexReport(indexed, unreadable, removed)
        if indexed or unreadable or removed:
            self.index.add_event(
                "reindexed",
                now=self._clock(),
                detail={"indexed": indexed, "unreadable": unreadable, "partial_removed": removed},
            )
        return report
