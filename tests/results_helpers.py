"""An EncodingInput for results tests, built fast from a small phantom with known
nodules (no model run): the findings are the phantom's own spheres, measured."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom

from node.inference.measure import measure_finding
from node.inference.package import ModelRegistry
from node.inference.volume import load_series
from node.results.context import EncodingInput
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
