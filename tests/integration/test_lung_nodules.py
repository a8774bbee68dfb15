"""The reference model through `radnode run` and in process: on the synthetic chest
phantom (truth known) and on the real LIDC-IDRI-0001 case (shared data)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from node.inference.package import ModelRegistry
from node.inference.pipelines import RuntimeSettings, build_pipeline
from node.synthetic import write_ct_series
from node.synthetic.phantom import PhantomSpec, make_chest_phantom

REPO = Path(__file__).resolve().parents[2]
FINDING_KEYS = {
    "label", "centroid_mm", "volume_mm3", "long_axis_mm", "short_axis_mm", "mean_hu", "score",
}  # fmt: skip


def radnode(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=timeout,
        check=False, cwd=REPO,
    )  # fmt: skip


def test_the_phantom_nodules_of_8_mm_and_more_are_found_and_measured() -> None:
    # Given the default chest phantom: nodules of 20, 12, 8 and 5 mm among vessels
    volume, truth = make_chest_phantom(PhantomSpec())
    package = ModelRegistry.load(REPO / "models").get("lung-nodules")
    # When the reference model runs on it
    result = build_pipeline(package, RuntimeSettings(intra_op_threads=2)).run(volume)
    # Then every nodule of 8 mm or more is found, measured within 15% of its diameter
    # and its volume within 20% of the drawn voxels
    matched: set[int] = set()
    for nodule in (n for n in truth.nodules if n.diameter_mm >= 8):
        near = [
            (n, f)
            for n, f in enumerate(result.findings)
            if math.dist(f.centroid_mm, nodule.center_mm) <= nodule.diameter_mm / 2
        ]
        assert near, f"the {nodule.diameter_mm} mm nodule at {nodule.center_mm} was missed"
        n, finding = near[0]
        matched.add(n)
        assert finding.long_axis_mm == pytest.approx(nodule.diameter_mm, rel=0.15)
        assert finding.volume_mm3 == pytest.approx(nodule.volume_mm3, rel=0.20)
        assert finding.score >= 0.5
    # And vessels are not reported as nodules: at most one finding matches nothing
    # (the 5 mm nodule on 2.5 mm slices may or may not be found; it counts as matched)
    small = [n for n in truth.nodules if n.diameter_mm < 8]
    extra = [
        f
        for n, f in enumerate(result.findings)
        if n not in matched and not any(math.dist(f.centroid_mm, s.center_mm) <= 5 for s in small)
    ]
    assert len(extra) <= 1, [f.centroid_mm for f in extra]
    # And the lung mask agrees with the drawn lungs
    lungs = result.segments["Lung"]
    dice = 2 * (lungs & truth.lung_mask).sum() / (lungs.sum() + truth.lung_mask.sum())
    assert dice >= 0.9


def test_radnode_models_lists_the_reference_model() -> None:
    done = radnode("models", "--models", str(REPO / "models"))
    assert done.returncode == 0, done.stderr
    assert "lung-nodules 1.0.0" in done.stdout
    assert "NOT FOR CLINICAL USE" in done.stdout


def test_radnode_run_refuses_a_series_the_model_cannot_use(tmp_path: Path) -> None:
    # Given a CT of 5 slices (the model needs 30)
    series = write_ct_series(tmp_path / "short", slices=5, rows=64, cols=64)
    # When a model developer runs the model on it
    done = radnode("run", "lung-nodules", str(series.paths[0].parent), "--out", str(tmp_path / "o"))
    # Then it exits 1 and says why, naming the count and the requirement
    assert done.returncode == 1
    assert "5 slices" in done.stderr and "30" in done.stderr


@pytest.mark.shared_data
def test_radnode_run_finds_the_lidc_nodule(shared_data: Path, tmp_path: Path) -> None:
    # Given the real LIDC-IDRI-0001 chest CT
    ct = shared_data / "data" / "lidc-idri-0001" / "ct"
    out = tmp_path / "out"
    # When a model developer runs the reference model on its folder
    done = radnode("run", "lung-nodules", str(ct), "--out", str(out))
    assert done.returncode == 0, done.stderr
    # Then the table and findings.json show the nodule all four readers marked,
    # about 3 cm across near (56, 86, -116) mm
    assert "Nodule" in done.stdout
    findings = json.loads((out / "findings.json").read_text())
    assert findings and all(set(f) >= FINDING_KEYS for f in findings)
    nodule = min(findings, key=lambda f: math.dist(f["centroid_mm"], (56, 86, -116)))
    assert math.dist(nodule["centroid_mm"], (56, 86, -116)) < 10
    assert 24 <= nodule["long_axis_mm"] <= 40
    assert 0.5 <= nodule["score"] <= 1
    assert (out / "arrays.npz").is_file() and (out / "result.json").is_file()


def test_a_slice_segmentation_package_needs_no_code(tmp_path: Path) -> None:
    # Given a package that declares only a 2D network and pipeline slice-segmentation,
    # as an ML engineer writes one: here the lung network, its lungs as the findings
    import shutil

    import yaml

    from node.inference.package import load_package
    from node.synthetic.phantom import make_chest_phantom
    from tests.results_helpers import SMALL

    folder = tmp_path / "lungs-only"
    folder.mkdir()
    shutil.copy(REPO / "models" / "lung-nodules" / "lung-unet.onnx", folder)
    spec = yaml.safe_load((REPO / "models" / "lung-nodules" / "model.yaml").read_text())
    spec.update(
        name="lungs-only",
        pipeline="slice-segmentation",
        networks={"lungs": spec["networks"]["lungs"]},
        parameters={"min_voxels": 1000},
        preprocessing={"add": 1024, "matrix": 512},
    )
    spec["outputs"]["segments"] = [{**spec["outputs"]["segments"][0], "finding": True}]
    (folder / "model.yaml").write_text(yaml.safe_dump(spec))
    package = load_package(folder)
    volume, truth = make_chest_phantom(SMALL)
    # When it runs on a small chest phantom
    result = build_pipeline(package, RuntimeSettings(intra_op_threads=2)).run(volume)
    # Then each lung is a finding, measured, and together they cover the drawn lungs
    assert len(result.findings) == 2
    assert all(f.label == "Lung" and f.volume_mm3 > 100_000 for f in result.findings)
    found = result.findings_labels > 0
    dice = 2 * (found & truth.lung_mask).sum() / (found.sum() + truth.lung_mask.sum())
    assert dice >= 0.9
