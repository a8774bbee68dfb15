"""Instance files on disk: written atomically and durably, laid out by UID.

A file is first written to a temporary name in its final folder, flushed and
fsynced, then renamed into place, and the folder is fsynced so the rename survives
a power cut. A reader therefore sees either nothing or the whole file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from node.errors import StorageFull

TEMP_MARK = ".partial-"
SUFFIX = ".dcm"


def instance_relpath(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """The path of an instance relative to the storage root: <study>/<series>/<sop>.dcm."""
    return str(PurePosixPath(study_uid, series_uid, sop_instance_uid + SUFFIX))


def free_bytes(root: Path) -> int:
    """Free bytes on the file system that holds `root`."""
    return shutil.disk_usage(root).free


STAGING_DIR = ".incoming"
RESULTS_DIR = "results"  # model results, beside the study folders (never a UID)
OUTPUTS_DIR = "dicom"  # a result's encoded DICOM objects: results/<job>/dicom/
RESULT_META = "result.json"  # a result's metadata, with the list of its objects


def check_reserve(folder: Path, size: int, reserve_bytes: int) -> None:
    """Raise StorageFull when keeping `size` more bytes would leave less than the reserve."""
    free = free_bytes(folder)
    if free - size < reserve_bytes:
        raise StorageFull(
            f"only {free // 2**20} MiB free under {folder}, below the reserve of "
            f"{reserve_bytes // 2**20} MiB; free disk space or lower storage.min_free_mb"
        )


def stage_durably(folder: Path, data: bytes, reserve_bytes: int, name: str) -> Path:
    """Write `data` to a new temporary file in `folder` and fsync it; return its path.

    Raises StorageFull when the write would leave less than the reserve free; on any
    failure nothing is left behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    check_reserve(folder, len(data), reserve_bytes)
    temp = folder / f"{TEMP_MARK}{os.getpid()}-{os.urandom(4).hex()}-{name}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    return temp


def place_durably(staged: Path, root: Path, relpath: str) -> None:
    """Rename a staged file to root/relpath and fsync its folder, so the name survives."""
    target = root / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staged, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        raise
    fsync_dir(target.parent)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (Linux syncs through any descriptor of the file)."""
    _fsync(path, 0)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable."""
    _fsync(folder, os.O_DIRECTORY)


def _series_entries(root: Path) -> Iterator[os.DirEntry[str]]:
    """Every entry two folders below the root (inside <study>/<series>/)."""
    if not root.is_dir():
        return
    for study in os.scandir(root):
        if (
            not study.is_dir(follow_symlinks=False)
            or study.name.startswith(".")
            or study.name == RESULTS_DIR
        ):
            continue
        for series in os.scandir(study.path):
            if series.is_dir(follow_symlinks=False):
                yield from os.scandir(series.path)


def iter_instance_files(root: Path) -> Iterator[str]:
    """Relative paths of every instance file under the root, in the standard layout."""
    for entry in _series_entries(root):
        if entry.name.endswith(SUFFIX) and not entry.name.startswith(TEMP_MARK):
            yield os.path.relpath(entry.path, root).replace(os.sep, "/")


def _walk_files(folder: str) -> Iterator[os.DirEntry[str]]:
    """Every file below `folder`, at any depth (a job's result has a dicom/ folder)."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_files(entry.path)
        else:
            yield entry


def remove_partial_files(root: Path) -> int:
    """Delete temporary files left by a crash; they were never acknowledged."""
    removed = 0
    staging = root / STAGING_DIR
    entries = list(_series_entries(root))
    if staging.is_dir():
        entries.extend(os.scandir(staging))
    results = root / RESULTS_DIR
    if results.is_dir():
        for job in os.scandir(results):
            if job.is_dir(follow_symlinks=False):
                entries.extend(_walk_files(job.path))
    for entry in entries:
        if entry.name.startswith(TEMP_MARK):
            os.unlink(entry.path)
            removed += 1
    return removed
