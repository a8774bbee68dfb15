"""Model results kept on disk between inference and encoding, written durably.

`<root>/results/<job id>/` holds `findings.json` (the findings, no patient data),
`arrays.npz` (masks, bit-packed) and `result.json` (model, version, provider,
timings, the source slices in volume order and their geometry). Each file is
written to a temporary name, fsynced and renamed, then the folder is fsynced; a
job is marked encoded only afterwards, so a crash leaves a job that runs again,
never a job that points at half a result.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from node.store.files import RESULTS_DIR, TEMP_MARK, fsync_dir
from node.store.sealed import read_bytes, read_text, seal


@dataclass(frozen=True)
class StoredResult:
    """A result read back: findings as JSON objects, arrays by name, the metadata."""

    folder: Path
    findings: list[dict[str, Any]]
    arrays: dict[str, npt.NDArray[Any]]
    meta: dict[str, Any]


def write_file_durably(folder: Path, name: str, data: bytes) -> None:
    """Write `data` to folder/name: temporary name, fsync, rename (fsync the folder after)."""
    fd, temp = tempfile.mkstemp(prefix=TEMP_MARK, dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(seal(data))  # sealed when encryption at rest is on
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, folder / name)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save_result(
    root: Path,
    job_id: str,
    *,
    findings: list[dict[str, Any]],
    masks: dict[str, npt.NDArray[np.bool_]],
    labels: dict[str, npt.NDArray[Any]],
    meta: dict[str, Any],
) -> str:
    """Write a job's result; return its folder relative to the storage root."""
    relpath = f"{RESULTS_DIR}/{job_id}"
    write_result(root / relpath, findings=findings, masks=masks, labels=labels, meta=meta)
    return relpath


def write_result(
    folder: Path,
    *,
    findings: list[dict[str, Any]],
    masks: dict[str, npt.NDArray[np.bool_]],
    labels: dict[str, npt.NDArray[Any]],
    meta: dict[str, Any],
) -> None:
    """Write a result's three files into `folder`, each durably."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    packed: dict[str, npt.NDArray[Any]] = {}
    for name, mask in masks.items():
        packed[f"mask:{name}"] = np.packbits(mask.astype(bool), axis=None)
        packed[f"shape:{name}"] = np.asarray(mask.shape, dtype=np.int64)
    for name, array in labels.items():
        # Label volumes are almost all zero: kept sparse (the flat index and value of
        # each labelled voxel), which writes in milliseconds instead of compressing
        # a whole volume of zeros.
        flat = np.flatnonzero(array)
        packed[f"labels:{name}"] = flat
        packed[f"lvalues:{name}"] = array.reshape(-1)[flat]
        packed[f"lshape:{name}"] = np.asarray(array.shape, dtype=np.int64)
        packed[f"ldtype:{name}"] = np.zeros(0, dtype=array.dtype)
    np.savez_compressed(buffer, **packed)  # type: ignore[arg-type]
    write_file_durably(folder, "arrays.npz", buffer.getvalue())
    write_file_durably(folder, "findings.json", json.dumps(findings, indent=1).encode())
    write_file_durably(folder, "result.json", json.dumps(meta, indent=1).encode())
    fsync_dir(folder)
    fsync_dir(folder.parent)


def load_result(root: Path, relpath: str = "") -> StoredResult:
    """Read a result written by save_result (or by write_result into `root`)."""
    folder = root / relpath if relpath else root
    findings = json.loads(read_text(folder / "findings.json"))
    meta = json.loads(read_text(folder / "result.json"))
    arrays: dict[str, npt.NDArray[Any]] = {}
    with np.load(io.BytesIO(read_bytes(folder / "arrays.npz"))) as data:
        for key in data.files:
            kind, _, name = key.partition(":")
            if kind == "mask":
                shape = tuple(int(v) for v in data[f"shape:{name}"])
                count = int(np.prod(shape))
                arrays[name] = np.unpackbits(data[key], count=count).astype(bool).reshape(shape)
            elif kind == "labels":
                shape = tuple(int(v) for v in data[f"lshape:{name}"])
                volume = np.zeros(shape, dtype=data[f"ldtype:{name}"].dtype)
                volume.reshape(-1)[data[key]] = data[f"lvalues:{name}"]
                arrays[name] = volume
    return StoredResult(folder, findings, arrays, meta)
