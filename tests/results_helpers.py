"""An EncodingInput for results tests, built fast from a small phantom with known
nodules (no model run): the findings are the phantom's own spheres, measured."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from node.inference.measure import measure_finding
from node.inference.package import ModelRegistry
from node.inference.volume import load_series
from node.results.context import EncodingInput
from node.synthetic import write_ct_series
from node.synthetic.phantom import PhantomNodule, PhantomSpec, write_chest_phantom

REPO = Path(__file__).resolve().parents[1]
SMALL = PhantomSpec(
    rows=256,
    columns=256,
    slices=40,
    pixel_spacing_mm=1.4,
    slice_step_mm=2.5,
    nodules=(
        PhantomNodule((-85.0, 35.0, -19.0), 20.0),
        PhantomNodule((121.5, -20.0, 30.0), 12.0),
    ),
)


def make_encoding_input(
    folder: Path, *, with_findings: bool = True, job_id: str = "job-test-0001"
) -> EncodingInput:
    """Write the small phantom to `folder` and describe it as a finished job."""
    truth = write_chest_phantom(folder, SMALL)
    assert truth.series is not None
    volume = load_series(list(truth.series.paths))
    sources = tuple(pydicom.dcmread(p, stop_before_pixels=True) for p in truth.series.paths)
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    ordered = tuple(by_uid[uid] for uid in volume.sop_instance_uids)
    labels = np.zeros(volume.shape, dtype=np.uint16)
    findings = []
    if with_findings:
        kk, jj, ii = np.indices(volume.shape, sparse=True)
        for number, nodule in enumerate(truth.nodules, start=1):
            ck, cj, ci = nodule.center_voxel
            dz, dy, dx = volume.spacing
            r2 = ((kk - ck) * dz) ** 2 + ((jj - cj) * dy) ** 2 + ((ii - ci) * dx) ** 2
            mask = r2 <= (nodule.diameter_mm / 2) ** 2
            finding = measure_finding(
                volume, mask, label="Nodule", tracking_id=f"nodule-{number}",
                score=0.9 - 0.1 * number,
            )  # fmt: skip
            assert finding is not None and math.dist(finding.centroid_mm, nodule.center_mm) < 2
            findings.append(finding)
            labels[mask] = number
    model = ModelRegistry.load(REPO / "models").get("lung-nodules").info()
    return EncodingInput(
        job_id=job_id,
        model=model,
        volume=volume,
        sources=ordered,
        findings=tuple(findings),
        findings_labels=labels,
        segments={"Lung": truth.lung_mask},
        include_segments=("Lung",),
        series_numbers_in_use=frozenset({1}),
    )


def make_lidc_size_input(folder: Path, *, job_id: str = "job-test-lidc") -> EncodingInput:
    """A result the size of LIDC-IDRI-0001 (133 x 512 x 512): one 30 mm finding inside
    two ellipsoidal lungs drawn on a synthetic CT series; for timing the encoders."""
    series = write_ct_series(folder, slices=133, rows=512, cols=512, slice_thickness_mm=2.5)
    volume = load_series(list(series.paths))
    sources = tuple(pydicom.dcmread(p, stop_before_pixels=True) for p in series.paths)
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    ordered = tuple(by_uid[uid] for uid in volume.sop_instance_uids)
    kk, jj, ii = np.indices(volume.shape, sparse=True)
    dz, dy, dx = volume.spacing
    lungs = np.zeros(volume.shape, dtype=bool)
    for centre_i in (150, 362):  # two lungs, 60 x 110 x 280 mm semi-axes
        lungs |= (
            ((ii - centre_i) * dx / 60) ** 2 + ((jj - 256) * dy / 110) ** 2
            + ((kk - 66) * dz / 140) ** 2 <= 1
        )  # fmt: skip
    nodule = ((ii - 362) * dx) ** 2 + ((jj - 256) * dy) ** 2 + ((kk - 66) * dz) ** 2 <= 15**2
    finding = measure_finding(volume, nodule, label="Nodule", tracking_id="nodule-1", score=0.9)
    assert finding is not None
    model = ModelRegistry.load(REPO / "models").get("lung-nodules").info()
    return EncodingInput(
        job_id=job_id,
        model=model,
        volume=volume,
        sources=ordered,
        findings=(finding,),
        findings_labels=nodule.astype(np.uint16),
        segments={"Lung": lungs},
        include_segments=("Lung",),
        series_numbers_in_use=frozenset({1}),
    )


def write(ds: Dataset, path: Path) -> Path:
    """Save a result object as a Part 10 file."""
    ds.save_as(path, enforce_file_format=True)
    return path


def to_bytes(ds: Dataset) -> bytes:
    """A result object's Part 10 bytes (to compare two builds)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def validator_messages(args: list[str]) -> tuple[set[str], set[str]]:
    """The Error and Warning lines a dicom3tools validator printed."""
    from tests.helpers import run_tool

    done = run_tool(args)
    lines = {line.strip() for line in (done.stdout + done.stderr).splitlines()}
    return (
        {line for line in lines if line.startswith("Error")},
        {line for line in lines if line.startswith("Warning")},
    )


@contextmanager
def strict_pydicom() -> Iterator[None]:
    """Invalid values (too long, wrong VR) raise while building and reading, as in
    highdicom's own tests."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    settings.writing_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved
