"""Keep received instances safe: durable file first, index row second, then acknowledge."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from node.domain import InstanceHeader, StoreResult
from node.errors import InvalidInput
from node.store.files import (
    instance_relpath,
    iter_instance_files,
    remove_partial_files,
    write_atomically,
)
from node.store.header import read_header
from node.store.index import InstanceIndex

log = structlog.get_logger("radnode.store")


@dataclass(frozen=True, slots=True)
class ReindexReport:
    """What the start-up scan of the storage root found."""

    indexed: int
    unreadable: int
    partial_removed: int


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
        """Store one received instance durably and index it.

        Identical bytes for a known SOP Instance UID are a duplicate and leave the
        index as it was; different bytes replace the file as a new version. Raises
        StorageFull when the disk is below its reserve, with nothing written, and
        InvalidInput when the SOP instance was received before in another series.
        """
        relpath = instance_relpath(header.study_uid, header.series_uid, header.sop_instance_uid)
        digest = hashlib.sha256(data).hexdigest()
        # Write first, index second: a crash in between leaves a file the start-up
        # scan indexes. A duplicate rewrites identical bytes, which is harmless and
        # cheaper than a look-up before every write.
        write_atomically(self.root, relpath, data, self.reserve_bytes)
        try:
            recorded = self.index.record_instance(
                header,
                relpath=relpath,
                size=len(data),
                sha256=digest,
                source=source,
                calling_ae=calling_ae,
                now=self._clock(),
            )
        except InvalidInput:
            self.path_of(relpath).unlink(missing_ok=True)
            raise
        return StoreResult(
            recorded.outcome,
            recorded.version,
            relpath,
            len(data),
            reopened_series=recorded.reopened_series,
        )

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
            data = self.path_of(relpath).read_bytes()
            try:
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
