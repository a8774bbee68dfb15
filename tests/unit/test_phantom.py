"""The chest phantom: geometry on disk, nodule truth, lung mask, validation, determinism."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage
from scipy import ndimage

from node.domain.volume import Volume
from node.synthetic import (
    DEFAULT_NODULES,
    PhantomNodule,
    PhantomSpec,
    PhantomTruth,
    make_chest_phantom,
    write_chest_phantom,
)
from tests.helpers import REPO

# 64 slices of 256 x 256 at 1.4 mm: the default anatomy and nodules on a coarser grid.
SMALL = PhantomSpec(rows=256, columns=256, slices=64, pixel_spacing_mm=1.4)
LUNG_UNET = REPO / "models" / "lung-nodules" / "lung-unet.onnx"


@pytest.fixture(scope="module")
def small() -> tuple[Volume, PhantomTruth]:
    return make_chest_phantom(SMALL)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PhantomTruth]:
    folder = tmp_path_factory.mktemp("phantom")
    return folder, write_chest_phantom(folder, SMALL, patient_id="SYN-0042")


def sphere_distance_mm(volume: Volume, center: tuple[float, float, float]) -> np.ndarray:
    """Distance of every voxel centre to a point, from the Volume's own geometry (axial,
    so each patient axis follows one index)."""
    nk, nj, ni = volume.shape
    z = volume.to_patient([(k, 0, 0) for k in range(nk)])[:, 2] - center[2]
    y = volume.to_patient([(0, j, 0) for j in range(nj)])[:, 1] - center[1]
    x = volume.to_patient([(0, 0, i) for i in range(ni)])[:, 0] - center[0]
    squared = z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2
    result: np.ndarray = np.sqrt(squared)
    return result


def test_the_written_series_has_the_volume_geometry_and_pixels(
    small: tuple[Volume, PhantomTruth], written: tuple[Path, PhantomTruth]
) -> None:
    # Given the small phantom in memory and written to disk
    volume, _ = small
    folder, truth = written
    assert truth.series is not None
    # When every file is read back
    datasets = [dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    # Then there is one file per slice, in slice order, with the Volume's geometry
    assert len(datasets) == SMALL.slices
    assert [str(ds.SOPInstanceUID) for ds in datasets] == list(truth.series.sop_instance_uids)
    for k, ds in enumerate(datasets):
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.InstanceNumber == k + 1
        np.testing.assert_allclose(
            [float(v) for v in ds.ImagePositionPatient], volume.to_patient([k, 0, 0]), atol=1e-4
        )
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [1.4, 1.4]
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 2.5
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        # And pixels that read back to exactly the Volume's HU
        np.testing.assert_array_equal(ds.pixel_array.astype(np.float32) - 1024, volume.hu[k])
    first = datasets[0]
    assert first.Modality == "CT" and first.BodyPartExamined == "CHEST"
    assert list(first.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert first.StudyDescription == "SYNTHETIC CHEST PHANTOM"
    assert "PHANTOM" in first.SeriesDescription
    assert (first.PatientName, first.PatientID) == ("SYNTHETIC^PATIENT", "SYN-0042")
    assert first.StudyInstanceUID == truth.series.study_uid
    assert first.SeriesInstanceUID == truth.series.series_uid
    assert all(uid.startswith("2.25.") for uid in (truth.series.study_uid, first.SOPInstanceUID))


def test_nodule_centres_have_the_nodule_density(
    small: tuple[Volume, PhantomTruth], written: tuple[Path, PhantomTruth]
) -> None:
    # Given the phantom read back from disk
    volume, truth = small
    folder, _ = written
    datasets = [dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    for nodule in truth.nodules:
        # When the voxel nearest each nodule centre is located from the file's geometry
        k, j, i = (round(c) for c in nodule.center_voxel)
        ds = datasets[k]
        x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        where = (x0 + i * col_mm, y0 + j * row_mm, z)
        assert math.dist(where, nodule.center_mm) <= math.hypot(0.7, 0.7, 1.25) + 1e-6
        # Then it holds the nodule's density, within the noise, for nodules of 8 mm or more
        if nodule.diameter_mm >= 8:
            value = float(ds.pixel_array[j, i]) - 1024
            assert abs(value - nodule.hu) <= 4 * SMALL.noise_hu
        # And the nodule's core averages to its density
        if nodule.diameter_mm >= 12:
            core = sphere_distance_mm(volume, nodule.center_mm) <= nodule.diameter_mm / 2 - 2.5
            assert abs(float(volume.hu[core].mean()) - nodule.hu) < 5


def test_truth_volumes_match_the_spheres(small: tuple[Volume, PhantomTruth]) -> None:
    volume, truth = small
    assert [n.diameter_mm for n in truth.nodules] == [n.diameter_mm for n in DEFAULT_NODULES]
    for nodule in truth.nodules:
        # The voxel count is the voxels whose centre is inside the sphere
        inside = sphere_distance_mm(volume, nodule.center_mm) <= nodule.diameter_mm / 2
        assert nodule.voxel_count == int(np.count_nonzero(inside))
        assert nodule.volume_mm3 == pytest.approx(nodule.voxel_count * volume.voxel_volume_mm3)
        assert nodule.analytic_volume_mm3 == pytest.approx(math.pi * nodule.diameter_mm**3 / 6)
        if nodule.diameter_mm >= 8:
            assert nodule.volume_mm3 == pytest.approx(nodule.analytic_volume_mm3, rel=0.10)


def test_nodules_sit_inside_the_lung_mask(small: tuple[Volume, PhantomTruth]) -> None:
    volume, truth = small
    for nodule in truth.nodules:
        inside = sphere_distance_mm(volume, nodule.center_mm) <= nodule.diameter_mm / 2
        assert truth.lung_mask[inside].all()
    # One of them is close to the chest wall without touching it
    gaps = sorted(n.pleura_gap_mm for n in truth.nodules)
    assert 0 < gaps[0] <= 6
    assert gaps[1] > gaps[0]


def test_the_lung_mask_is_two_air_filled_lungs(small: tuple[Volume, PhantomTruth]) -> None:
    volume, truth = small
    lungs = truth.lung_mask
    labels, count = ndimage.label(lungs)
    sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1]
    assert count >= 2 and sizes[1] > 0.3 * sizes[0]  # right and left
    assert sizes[:2].sum() > 0.99 * lungs.sum()
    assert truth.lung_volume_ml == pytest.approx(lungs.sum() * volume.voxel_volume_mm3 / 1000)
    assert 2000 < truth.lung_volume_ml < 6000
    values = volume.hu[lungs]
    assert float(np.median(values)) < -800
    assert float(np.mean(values < -500)) > 0.9  # vessels and nodules are the rest
    # Outside the lungs: soft tissue, bone and air around the body, but no parenchyma
    assert float(np.mean((volume.hu[~lungs] > -950) & (volume.hu[~lungs] < -700))) < 0.02


def test_vessels_taper_from_hilum_to_periphery(small: tuple[Volume, PhantomTruth]) -> None:
    _, truth = small
    radii = np.array([v.r1_mm for v in truth.vessels])
    assert len(truth.vessels) > 500
    assert radii.max() <= 5.0 and radii.min() >= 1.0
    assert np.mean(radii < 2.0) > 0.5  # most branches are small


def test_same_seed_gives_same_pixels() -> None:
    spec = PhantomSpec(rows=96, columns=96, slices=24, pixel_spacing_mm=3.7, slice_step_mm=7.5)
    first, truth = make_chest_phantom(spec)
    again, truth_again = make_chest_phantom(spec)
    other, _ = make_chest_phantom(replace(spec, seed=1))
    np.testing.assert_array_equal(first.hu, again.hu)
    assert truth.vessels == truth_again.vessels
    assert not np.array_equal(first.hu, other.hu)


def test_without_vessels_or_noise_the_lungs_are_plain() -> None:
    spec = PhantomSpec(
        rows=96,
        columns=96,
        slices=24,
        pixel_spacing_mm=3.7,
        slice_step_mm=7.5,
        vessels=False,
        noise_hu=0,
        nodules=(),
    )
    volume, truth = make_chest_phantom(spec)
    assert truth.vessels == () and truth.nodules == ()
    values = volume.hu[truth.lung_mask]
    assert values.min() > -950 and values.max() < -750


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rows": 0}, r"PhantomSpec\.rows must be a positive integer, got 0"),
        ({"slice_step_mm": -1.0}, r"PhantomSpec\.slice_step_mm must be positive, got -1\.0"),
        ({"noise_hu": -5.0}, r"PhantomSpec\.noise_hu must be >= 0, got -5\.0"),
        ({"seed": -1}, r"PhantomSpec\.seed must be an integer >= 0, got -1"),
        (
            {"nodules": (PhantomNodule((0.0, -40.0, -30.0), 8.0),)},
            r"nodules\[0\]\.center_mm \(0\.0, -40\.0, -30\.0\) is outside the lungs",
        ),
        (
            {
                "nodules": (
                    PhantomNodule((-80.0, 0.0, 0.0), 10.0),
                    PhantomNodule((-75.0, 0.0, 0.0), 6.0),
                )
            },
            r"nodules\[1\] at \(-75\.0, 0\.0, 0\.0\) overlaps PhantomSpec\.nodules\[0\]",
        ),
        (
            {"nodules": (PhantomNodule((-80.0, 0.0, 0.0), 0.0),)},
            r"nodules\[0\]\.diameter_mm must be positive, got 0\.0",
        ),
        (
            {"slices": 20, "nodules": (PhantomNodule((-80.0, 0.0, 60.0), 8.0),)},
            r"nodules\[0\]\.center_mm \(-80\.0, 0\.0, 60\.0\) does not fit in the volume: z",
        ),
    ],
)
def test_a_bad_spec_is_refused_naming_the_value(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(SMALL, **change)  # type: ignore[arg-type]


@pytest.mark.skipif(not LUNG_UNET.exists(), reason="models/lung-nodules/lung-unet.onnx not built")
def test_the_lung_unet_finds_the_phantom_lungs() -> None:
    ort = pytest.importorskip("onnxruntime")
    # Given a 512 x 512 phantom (the network's input size) on 5 mm slices
    volume, truth = make_chest_phantom(PhantomSpec(slices=40, slice_step_mm=5.0))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(LUNG_UNET), options, providers=["CPUExecutionProvider"])
    # When the network segments eight slices through the lungs (stored values: HU + 1024)
    ks = np.arange(6, 38, 4)
    image = (volume.hu[ks] + 1024).astype(np.float32)[:, None]
    probability = session.run(["lung_probability"], {"image": image})[0][:, 0]
    found = probability >= 0.5
    # Then its mask agrees with the truth
    expected = truth.lung_mask[ks]
    dice = 2 * np.count_nonzero(found & expected) / (found.sum() + expected.sum())
    assert dice >= 0.9
