"""Build every output a job's destinations ask for, and keep them on disk.

The SEG comes first (the SR references its segments), then the SR, the key images,
the KOS (which flags the key source slices) and the summary. Files are written
durably under the job's result folder, one per object, named by kind; their UIDs are
deterministic, so a job run again writes the same objects.
"""

from __future__ import annotations

import io
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from node.results.context import ALL_OUTPUTS, EncodingInput, OutputKind
from node.results.fallbacks import build_key_images, build_kos, build_summary
from node.results.seg import build_seg
from node.results.sr import build_sr
from node.store.files import OUTPUTS_DIR, TEMP_MARK, fsync_dir
from node.store.results import write_file_durably

__all__ = ["OUTPUTS_DIR", "Output", "encode", "warm_up_encoders", "write_outputs"]


@dataclass(frozen=True, slots=True)
class Output:
    """One encoded object."""

    kind: OutputKind
    dataset: Dataset
    filename: str

    def describe(self) -> dict[str, str | int]:
        """What result.json records of it (UIDs, series number, file; no patient data)."""
        return {
            "kind": self.kind,
            "file": self.filename,
            "sop_class_uid": str(self.dataset.SOPClassUID),
            "sop_instance_uid": str(self.dataset.SOPInstanceUID),
            "series_uid": str(self.dataset.SeriesInstanceUID),
            "series_number": int(self.dataset.get("SeriesNumber") or 0),
        }


def encode(
    inp: EncodingInput, kinds: Collection[OutputKind] = ALL_OUTPUTS
) -> tuple[list[Output], dict[str, float]]:
    """The outputs of `kinds` (in a fixed order) and the seconds each kind took."""
    wanted = set(kinds)
    outputs: list[Output] = []
    timings: dict[str, float] = {}

    def timed(kind: str, started: float) -> None:
        timings[kind] = time.perf_counter() - started

    started = time.perf_counter()
    # The SR's volumetric groups point at SEG segments: build the SEG for the SR too.
    seg = build_seg(inp) if inp.findings and wanted & {"seg", "sr"} else None
    timed("seg", started)
    if seg is not None and "seg" in wanted:
        outputs.append(Output("seg", seg, "seg.dcm"))
    if "sr" in wanted:
        started = time.perf_counter()
        outputs.append(Output("sr", build_sr(inp, seg), "sr.dcm"))
        timed("sr", started)
    key_images: list[Dataset] = []
    if wanted & {"sc", "kos"}:
        started = time.perf_counter()
        key_images = build_key_images(inp)
        timed("sc", started)
        if "sc" in wanted:
            outputs.extend(
                Output("sc", ds, f"sc-{n}.dcm") for n, ds in enumerate(key_images, start=1)
            )
    if "kos" in wanted:
        started = time.perf_counter()
        # Only the source slices: a destination may receive the KOS without the other
        # outputs, and a reference to an object it never gets would dangle.
        kos = build_kos(inp, [])
        timed("kos", started)
        if kos is not None:
            outputs.append(Output("kos", kos, "kos.dcm"))
    if "pdf" in wanted:
        started = time.perf_counter()
        outputs.append(Output("pdf", build_summary(inp), "summary.dcm"))
        timed("pdf", started)
    return outputs, timings


def write_outputs(folder: Path, outputs: list[Output]) -> None:
    """Write each object as a Part 10 file, durably (temporary name, fsync, rename), and
    remove files an earlier run of the job left that this one did not write; then the
    folder is fsynced, so the folder holds exactly the objects result.json lists."""
    folder.mkdir(parents=True, exist_ok=True)
    for output in outputs:
        buffer = io.BytesIO()
        output.dataset.save_as(buffer, enforce_file_format=True)
        write_file_durably(folder, output.filename, buffer.getvalue())
    wanted = {output.filename for output in outputs}
    for stale in folder.iterdir():
        # Finished objects of an earlier run only: a temporary file may belong to a
        # worker still writing (the start-up scan removes those left by a crash).
        if stale.is_file() and stale.name not in wanted and not stale.name.startswith(TEMP_MARK):
            stale.unlink()
    fsync_dir(folder)


def warm_up_encoders() -> bool:
    """Load highdicom's tables of the standard (IODs, modules, attributes) now, so the
    first job does not pay for it (about 0.4 s). They sit behind a private, cached
    function: if a highdicom release moves it, the first job pays, nothing breaks.
    Returns whether the tables were loaded."""
    try:
        from highdicom import _standard_utils as standard

        standard.get_sop_class_iod_map()
        standard.get_iod_module_map()
        standard.get_module_attribute_map()
    except (ImportError, AttributeError):
        return False
    return True
