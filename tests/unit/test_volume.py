"""A received series becomes a Volume in HU with the right geometry, or is rejected
with a reason that names the attribute and the value."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from node.domain.volume import Volume
from node.errors import InvalidInput
from node.inference import volume as volume_module
from node.inference.volume import (
    SeriesRejected,
    SeriesRequirements,
    check_headers,
    load_series,
    load_series_folder,
)
from node.ingest.syntaxes import ACCEPTED_TRANSFER_SYNTAXES
from node.synthetic import write_ct_series
from tests.helpers import dcmtk

# -- helpers -----------------------------------------------------------------------


def edit(path: Path, change: Callable[[Dataset], None]) -> None:
    """Rewrite one file after `change` has edited its data set."""
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def edit_all(paths: tuple[Path, ...], change: Callable[[int, Dataset], None]) -> None:
    for index, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        change(index, ds)
        ds.save_as(path, enforce_file_format=True)


def series(tmp_path: Path, slices: int = 6, **kwargs: object) -> tuple[Path, ...]:
    return write_ct_series(tmp_path / "series", slices=slices, **kwargs).paths  # type: ignore[arg-type]


def headers(paths: tuple[Path, ...]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def rejected(paths: tuple[Path, ...], requirements: SeriesRequirements | None = None) -> str:
    with pytest.raises(SeriesRejected) as caught:
        load_series(list(paths), requirements)
    return caught.value.reason


def position(path: Path) -> np.ndarray:
    return np.array([float(v) for v in pydicom.dcmread(path).ImagePositionPatient])


def stored_hu(path: Path) -> np.ndarray:
    """A file's HU computed independently of the loader, in float64."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def rotation(alpha: float, beta: float, gamma: float) -> np.ndarray:
    """A rotation matrix from three angles (radians), for oblique orientations."""
    ca, sa, cb, sb, cg, sg = (
        np.cos(alpha),
        np.sin(alpha),
        np.cos(beta),
        np.sin(beta),
        np.cos(gamma),
        np.sin(gamma),
    )
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cg, -sg, 0], [sg, cg, 0], [0, 0, 1]])
    return rz @ ry @ rx  # type: ignore[no-any-return]


def set_geometry(
    paths: tuple[Path, ...], row: np.ndarray, col: np.ndarray, positions: list[np.ndarray]
) -> None:
    def change(index: int, ds: Dataset) -> None:
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
        ds.ImagePositionPatient = [round(float(v), 6) for v in positions[index]]

    edit_all(paths, change)


def assert_geometry_matches_files(volume: Volume, paths: tuple[Path, ...]) -> None:
    """Voxel (k, j, i) sits where DICOM puts pixel (row j, column i) of slice k's file."""
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in paths}
    for k, uid in enumerate(volume.sop_instance_uids):
        ds = pydicom.dcmread(by_uid[uid])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
        np.testing.assert_allclose(volume.to_patient((k, 0, 0)), ipp, atol=1e-4)
        j, i = ds.Rows - 1, ds.Columns - 1
        expected = ipp + i * col_spacing * iop[:3] + j * row_spacing * iop[3:]
        np.testing.assert_allclose(volume.to_patient((k, j, i)), expected, atol=1e-4)


# -- sorting, HU, geometry ---------------------------------------------------------


def test_slices_are_sorted_by_position_not_by_file_order_or_instance_number(
    tmp_path: Path,
) -> None:
    # Given a series whose InstanceNumbers are shuffled, passed in a shuffled file order
    written = write_ct_series(tmp_path / "s", slices=8)
    rng = np.random.default_rng(3)
    numbers = [int(n) for n in rng.permutation(8) + 1]
    edit_all(written.paths, lambda i, ds: setattr(ds, "InstanceNumber", numbers[i]))
    files = [written.paths[int(i)] for i in rng.permutation(8)]
    # When it is loaded
    volume = load_series(files)
    # Then k grows along the slice normal (+z for axial; the files go down in z)
    assert volume.sop_instance_uids == tuple(reversed(written.sop_instance_uids))
    z = [volume.to_patient((k, 0, 0))[2] for k in range(volume.shape[0])]
    assert z == sorted(z)
    # And each slice holds its own file's pixels
    for k, path in enumerate(reversed(written.paths)):
        np.testing.assert_array_equal(volume.hu[k], stored_hu(path))


def test_rescale_is_applied_per_slice(tmp_path: Path) -> None:
    # Given slices whose RescaleSlope and RescaleIntercept differ
    paths = series(tmp_path, slices=5)
    slopes = [1.0, 0.5, 2.0, 1.25, 1.0]
    intercepts = [-1024.0, -1000.0, -2048.0, 0.0, 7.5]

    def change(i: int, ds: Dataset) -> None:
        ds.RescaleSlope = slopes[i]
        ds.RescaleIntercept = intercepts[i]

    edit_all(paths, change)
    # When the series is loaded
    volume = load_series(list(paths))
    # Then every slice is stored * its slope + its intercept, as float32
    assert volume.hu.dtype == np.float32
    for k, path in enumerate(reversed(paths)):
        np.testing.assert_allclose(volume.hu[k], stored_hu(path), rtol=1e-6, atol=1e-3)


def test_axial_geometry_and_volume_fields(tmp_path: Path) -> None:
    # Given an axial series, not square, with different row and column spacings
    written = write_ct_series(tmp_path / "s", slices=6, rows=40, cols=56, slice_thickness_mm=2.0)
    edit_all(written.paths, lambda _i, ds: setattr(ds, "PixelSpacing", [0.6, 0.9]))
    # When it is loaded
    volume = load_series(list(written.paths))
    # Then the fields come from the headers
    assert volume.shape == (6, 40, 56)
    assert volume.spacing == pytest.approx((2.0, 0.6, 0.9))
    assert volume.row_direction == (1.0, 0.0, 0.0)
    assert volume.column_direction == (0.0, 1.0, 0.0)
    assert volume.study_uid == written.study_uid
    assert volume.series_uid == written.series_uid
    assert volume.modality == "CT"
    assert volume.slice_thickness_mm == 2.0
    assert volume.sop_class_uid == pydicom.uid.CTImageStorage
    assert volume.frame_of_reference_uid == pydicom.dcmread(written.paths[0]).FrameOfReferenceUID
    np.testing.assert_allclose(volume.origin, position(written.paths[-1]))
    # And voxel positions are where DICOM puts the pixels
    assert_geometry_matches_files(volume, written.paths)


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["increasing", "decreasing"])
def test_oblique_geometry(tmp_path: Path, direction: float) -> None:
    # Given a tilted, oblique series whose files step along (or against) the normal
    r = rotation(0.3, -0.2, 0.5)
    row, col = r[:, 0], r[:, 1]
    normal = np.cross(row, col)
    origin = np.array([-20.0, 35.5, 110.0])
    paths = series(tmp_path, slices=7)
    positions = [origin + direction * 1.7 * i * normal for i in range(7)]
    set_geometry(paths, row, col, positions)
    # When it is loaded
    volume = load_series(list(paths))
    # Then the step, directions and voxel positions follow the headers
    assert volume.spacing[0] == pytest.approx(1.7)
    np.testing.assert_allclose(volume.slice_direction, normal, atol=1e-6)
    assert_geometry_matches_files(volume, paths)


def test_uneven_step_within_the_factor_is_accepted_with_the_median_step(tmp_path: Path) -> None:
    # Given positions with a slightly uneven step (highdicom would refuse this series)
    paths = series(tmp_path, slices=6)
    z = [0.0, 2.5, 5.0, 7.9, 10.0, 12.5]  # steps 2.5, 2.5, 2.9, 2.1, 2.5
    set_geometry(
        paths, np.array([1, 0, 0]), np.array([0, 1, 0]), [np.array([0.0, 0.0, v]) for v in z]
    )
    # When it is loaded
    volume = load_series(list(paths))
    # Then the volume uses the median step
    assert volume.spacing[0] == pytest.approx(2.5)
    assert volume.shape[0] == 6


def test_our_affine_matches_highdicom_on_a_regular_series(tmp_path: Path) -> None:
    # Given a regular oblique series (where highdicom's get_volume_from_series fits)
    r = rotation(0.1, 0.25, -0.4)
    paths = series(tmp_path, slices=5)
    normal = np.cross(r[:, 0], r[:, 1])
    set_geometry(
        paths, r[:, 0], r[:, 1], [np.array([5.0, -3.0, 40.0]) - 2.0 * i * normal for i in range(5)]
    )
    ours = load_series(list(paths))
    # When highdicom builds its volume from the same files
    theirs = highdicom.get_volume_from_series([pydicom.dcmread(p) for p in paths], dtype=np.float32)
    # Then, with its slice axis reversed (it orders slices against the normal), the
    # affine and the voxels are the same
    flipped = theirs.flip_spatial(0)
    np.testing.assert_allclose(ours.affine, flipped.affine, atol=1e-5)
    np.testing.assert_allclose(ours.hu, flipped.array, atol=1e-3)


def test_a_single_slice_takes_its_thickness_as_step(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=1, slice_thickness_mm=3.0)
    volume = load_series(list(paths))
    assert volume.shape == (1, 64, 64)
    assert volume.spacing[0] == 3.0


# -- rejections ----------------------------------------------------------------------


def test_mixed_orientation_is_rejected(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=6)
    edit(paths[2], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
    reason = rejected(paths)
    assert reason == "mixed ImageOrientationPatient: 2 different orientations in 6 slices"


def test_orientation_within_tolerance_is_one_orientation(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=4)
    edit(paths[1], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0.00005, 0, 0, 1, 0]))
    assert load_series(list(paths)).shape[0] == 4


def test_a_gap_is_rejected_with_the_slices_and_instance_numbers(tmp_path: Path) -> None:
    # Given slices every 2.5 mm with one missing
    paths = series(tmp_path, slices=8, slice_thickness_mm=2.5)
    reason = rejected(paths[:3] + paths[4:])
    # Then the reason names the gap, where it is and the median step
    assert reason == (
        "gap of 5.0 mm between slices 3 and 4 (InstanceNumber 5, 3); median step 2.5 mm"
    )


def test_gap_factor_is_configurable(tmp_path: Path) -> None:
    # Given a series with one missing slice and a model that tolerates that (the
    # slices past the gap then sit one step off their grid plane, within the slack)
    paths = series(tmp_path, slices=8, slice_thickness_mm=2.5)
    volume = load_series(list(paths[:3] + paths[4:]), SeriesRequirements(allow_gap_factor=2.5))
    assert volume.shape[0] == 7


def test_positions_drifting_off_the_median_grid_are_rejected(tmp_path: Path) -> None:
    # Given steps alternating runs of 2.0 and 2.8 mm: each within the factor, but
    # slices end up far from where the median step puts them
    steps = [2.0] * 6 + [2.8] * 7
    z = np.concatenate([[0.0], np.cumsum(steps)])
    paths = series(tmp_path, slices=len(z))
    set_geometry(
        paths, np.array([1, 0, 0]), np.array([0, 1, 0]), [np.array([0.0, 0.0, v]) for v in z]
    )
    reason = rejected(paths)
    assert reason.startswith("uneven slice spacing: slice ")
    assert "from where the median step 2.8 mm puts it" in reason


def test_a_sheared_stack_is_rejected(tmp_path: Path) -> None:
    # Given a gantry-tilted stack: positions move in-plane from slice to slice
    paths = series(tmp_path, slices=6)
    set_geometry(
        paths,
        np.array([1, 0, 0]),
        np.array([0, 1, 0]),
        [np.array([0.0, 0.4 * i, 2.5 * i]) for i in range(6)],
    )
    reason = rejected(paths)
    assert reason.startswith("ImagePositionPatient of slice 5 lies 2.0 mm off the slice normal")


def test_a_localizer_is_rejected(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=4)
    edit(paths[0], lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    reason = rejected(paths)
    assert reason == "ImageType LOCALIZER: a scout image, not a volume (1 of 4 instances)"


def test_too_few_slices_are_rejected(tmp_path: Path) -> None:
    reason = rejected(series(tmp_path, slices=3), SeriesRequirements(min_slices=30))
    assert reason == "3 slices; the model needs at least 30"


def test_thick_slices_are_rejected(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=4, slice_thickness_mm=5.0)
    reason = rejected(paths, SeriesRequirements(max_slice_thickness_mm=2.5))
    assert reason == "SliceThickness 5.0 mm; the model accepts at most 2.5 mm"


def test_missing_thickness_is_judged_by_the_step(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=4, slice_thickness_mm=5.0)
    edit_all(paths, lambda _i, ds: delattr(ds, "SliceThickness"))
    reason = rejected(paths, SeriesRequirements(max_slice_thickness_mm=2.5))
    assert (
        reason == "SliceThickness missing and slice step 5.0 mm; the model accepts at most 2.5 mm"
    )


def test_a_wrong_modality_is_rejected(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=3)
    edit_all(paths, lambda _i, ds: setattr(ds, "Modality", "MR"))
    assert rejected(paths, SeriesRequirements(modalities=("CT",))) == (
        "Modality MR; the model accepts CT"
    )


def test_another_body_part_is_rejected_and_an_empty_one_passes(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=3)
    chest = SeriesRequirements(body_parts=("CHEST", "LUNG"))
    edit_all(paths, lambda _i, ds: setattr(ds, "BodyPartExamined", "HEAD"))
    assert rejected(paths, chest) == "BodyPartExamined HEAD; the model accepts CHEST, LUNG"
    edit_all(paths, lambda _i, ds: setattr(ds, "BodyPartExamined", ""))
    assert load_series(paths, chest).shape[0] == 3


def test_duplicate_positions_are_rejected(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=6)
    edit(
        paths[3],
        lambda ds: setattr(
            ds, "ImagePositionPatient", pydicom.dcmread(paths[2]).ImagePositionPatient
        ),
    )
    reason = rejected(paths)
    assert reason == "duplicate ImagePositionPatient at slice 2 (2 instances at the same position)"


def test_mixed_matrix_is_rejected(tmp_path: Path) -> None:
    big = write_ct_series(tmp_path / "a", slices=3, rows=64, cols=64)
    small = write_ct_series(tmp_path / "b", slices=1, rows=32, cols=32, series_uid=big.series_uid)
    edit(small.paths[0], lambda ds: setattr(ds, "ImagePositionPatient", [0, 0, 10]))
    assert rejected(big.paths + small.paths) == "mixed Rows x Columns: 64x64 and 32x32"


def test_matrix_bounds_are_checked(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=2)
    assert rejected(paths, SeriesRequirements(min_matrix=128)) == (
        "Rows x Columns 64x64; the model needs at least 128 on the shorter side"
    )
    assert rejected(paths, SeriesRequirements(max_matrix=32)) == (
        "Rows x Columns 64x64; the model accepts at most 32 on the longer side"
    )


def test_mixed_pixel_spacing_is_rejected(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=3)
    edit(paths[1], lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.8]))
    assert rejected(paths) == "mixed PixelSpacing: 0.7\\0.7 and 0.8\\0.8 mm in 3 slices"


def test_a_multi_frame_image_is_rejected(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=2)
    edit(paths[0], lambda ds: setattr(ds, "NumberOfFrames", 200))
    assert rejected(paths) == "unsupported multi-frame image (NumberOfFrames 200)"


def test_missing_geometry_names_the_attribute(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=2)
    edit(paths[1], lambda ds: delattr(ds, "ImagePositionPatient"))
    assert rejected(paths).startswith("ImagePositionPatient missing (SOPInstanceUID ")


def test_a_slice_without_pixel_data_is_rejected(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=3)
    edit(paths[1], lambda ds: delattr(ds, "PixelData"))
    assert rejected(paths).startswith("no pixel data (SOPInstanceUID ")


def test_undecodable_pixel_data_is_rejected_with_the_transfer_syntax(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=3)

    def corrupt(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3 not a JPEG stream"])

    edit(paths[1], corrupt)
    reason = rejected(paths)
    assert reason.startswith("could not decode pixel data: ")
    assert reason.endswith(f"(TransferSyntaxUID {JPEGLosslessSV1})")


def test_headers_are_checked_before_any_pixel_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a series a model cannot use, and a decoder that must not be reached
    paths = series(tmp_path, slices=3)

    def no_decoding(_path: Path) -> np.ndarray:
        raise AssertionError("pixels were decoded before the headers were checked")

    monkeypatch.setattr(volume_module, "pixel_array", no_decoding)
    # Then the header reason comes back
    assert rejected(paths, SeriesRequirements(min_slices=10)).startswith("3 slices")


def test_the_rejection_is_invalid_input_and_names_the_series(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "s", slices=2)
    with pytest.raises(InvalidInput, match=f"series {written.series_uid} rejected: 2 slices"):
        load_series(list(written.paths), SeriesRequirements(min_slices=5))


def test_check_headers_returns_the_order(tmp_path: Path) -> None:
    paths = series(tmp_path, slices=4)
    layout = check_headers(headers(paths))
    assert layout.order == (3, 2, 1, 0)
    assert layout.slice_step_mm == pytest.approx(1.25)


def test_requirements_validate_their_values() -> None:
    with pytest.raises(ValueError, match=re.escape("allow_gap_factor must exceed 1.0, got 0.5")):
        SeriesRequirements(allow_gap_factor=0.5)
    with pytest.raises(ValueError, match="min_slices must be at least 1, got 0"):
        SeriesRequirements(min_slices=0)
    with pytest.raises(TypeError, match="modalities must be a tuple of strings"):
        SeriesRequirements(modalities="CT")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_matrix 512 exceeds max_matrix 256"):
        SeriesRequirements(min_matrix=512, max_matrix=256)


# -- folders -------------------------------------------------------------------------


def test_folder_skips_non_dicom_files(tmp_path: Path) -> None:
    written = write_ct_series(tmp_path / "s", slices=4)
    (tmp_path / "s" / "README.txt").write_text("not DICOM")
    volume = load_series_folder(tmp_path / "s")
    assert volume.sop_instance_uids == tuple(reversed(written.sop_instance_uids))


def test_folder_with_two_series_is_rejected_unless_one_is_picked(tmp_path: Path) -> None:
    first = write_ct_series(tmp_path / "f", slices=4)
    second = write_ct_series(tmp_path / "other", slices=2, study_uid=first.study_uid)
    for path in second.paths:
        path.rename(tmp_path / "f" / f"second-{path.name}")
    with pytest.raises(SeriesRejected) as caught:
        load_series_folder(tmp_path / "f")
    assert caught.value.reason == (
        f"2 series in one folder: {first.series_uid} (4 instances), "
        f"{second.series_uid} (2 instances); pick one by SeriesInstanceUID"
    )
    picked = load_series_folder(tmp_path / "f", series_uid=second.series_uid)
    assert picked.series_uid == second.series_uid
    assert picked.shape[0] == 2


# -- transfer syntaxes -----------------------------------------------------------------

# How each syntax is made from the uncompressed reference, and how close it must be.
# pydicom encodes RLE and JPEG 2000 (pylibjpeg-openjpeg); DCMTK encodes JPEG and
# JPEG-LS (pydicom's JPEG-LS encoder needs pyjpegls, which the project does not pin).
LOSSLESS = 0.0


def _with_pydicom(syntax: str, **options: object) -> Callable[[Path, Path], None]:
    def convert(src: Path, dst: Path) -> None:
        ds = pydicom.dcmread(src)
        if syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = UID(syntax)
        else:
            ds.compress(syntax, **options)  # type: ignore[arg-type]
        ds.save_as(dst, enforce_file_format=True)

    return convert


def _with_dcmtk(tool: str, *options: str, unsigned: bool = False) -> Callable[[Path, Path], None]:
    def convert(src: Path, dst: Path) -> None:
        if unsigned:  # dcmcjpls near-lossless refuses signed pixels: same HU, unsigned
            src = _as_unsigned(src, dst.with_suffix(".unsigned.dcm"))
        result = subprocess.run(
            [dcmtk(tool), *options, str(src), str(dst)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr

    return convert


def _as_unsigned(src: Path, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    values = ds.pixel_array.astype(np.int32) + 1024
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = float(ds.RescaleIntercept) - 1024
    ds.PixelData = values.astype("<u2").tobytes()
    ds.save_as(dst, enforce_file_format=True)
    return dst


# (syntax, converter, largest and mean |HU difference| allowed). The synthetic image
# has about 13 HU of noise, which lossy codecs smooth: JPEG baseline keeps 8 bits
# (DCMTK rescales about 2000 HU to 256 levels), extended 12; JPEG-LS near-lossless
# keeps every value within NEAR (3); JPEG 2000 at 5:1.
SYNTAXES = {
    "implicit-vr-le": (ImplicitVRLittleEndian, _with_pydicom(ImplicitVRLittleEndian), 0, 0),
    "deflated": (DeflatedExplicitVRLittleEndian,
                 _with_pydicom(DeflatedExplicitVRLittleEndian), 0, 0),
    "rle-pydicom": (RLELossless, _with_pydicom(RLELossless), 0, 0),
    "rle-dcmtk": (RLELossless, _with_dcmtk("dcmcrle"), 0, 0),
    "jpeg-lossless-sv1": (JPEGLosslessSV1, _with_dcmtk("dcmcjpeg", "+e1"), 0, 0),
    "jpeg-lossless-p14": (JPEGLossless, _with_dcmtk("dcmcjpeg", "+el"), 0, 0),
    "jpeg-baseline": (JPEGBaseline8Bit, _with_dcmtk("dcmcjpeg", "+eb"), 200, 25),
    "jpeg-extended": (JPEGExtended12Bit, _with_dcmtk("dcmcjpeg", "+ee"), 30, 5),
    "jpeg-ls-lossless": (JPEGLSLossless, _with_dcmtk("dcmcjpls", "+el"), 0, 0),
    "jpeg-ls-near-lossless": (JPEGLSNearLossless,
                              _with_dcmtk("dcmcjpls", "+en", "+md", "3", unsigned=True), 3, 3),
    "j2k-lossless": (JPEG2000Lossless, _with_pydicom(JPEG2000Lossless), 0, 0),
    "j2k-lossy": (JPEG2000, _with_pydicom(JPEG2000, j2k_cr=[5]), 80, 15),
}  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """An uncompressed synthetic series and its HU, loaded once."""
    folder = tmp_path_factory.mktemp("reference")
    paths = write_ct_series(folder, slices=3, rows=48, cols=40).paths
    return folder, load_series(list(paths)).hu


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_every_transfer_syntax_decodes_to_the_original_hu(
    name: str, reference: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    syntax, convert, max_error, mean_error = SYNTAXES[name]
    source, expected = reference
    # Given the reference series written in this transfer syntax
    converted = []
    for src in sorted(source.glob("*.dcm")):
        dst = tmp_path / src.name
        convert(src, dst)
        assert pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        converted.append(dst)
    # When it is loaded
    volume = load_series(converted)
    # Then its HU are the original's: exactly when lossless, close when lossy
    error = np.abs(volume.hu.astype(np.float64) - expected)
    if max_error == LOSSLESS:
        np.testing.assert_array_equal(volume.hu, expected)
    else:
        assert error.max() <= max_error, f"{name}: max |dHU| {error.max()}"
        assert error.mean() <= mean_error, f"{name}: mean |dHU| {error.mean()}"


def test_every_accepted_syntax_has_a_decoder_and_a_test_or_a_reason() -> None:
    # Every syntax the node accepts has a pydicom decoder available here
    for syntax in ACCEPTED_TRANSFER_SYNTAXES:
        assert get_decoder(syntax).is_available, syntax
    # And each is covered by a decoding test above, or is HTJ2K (skipped below)
    tested = {entry[0] for entry in SYNTAXES.values()} | {ExplicitVRLittleEndian}
    assert set(ACCEPTED_TRANSFER_SYNTAXES) - tested == {HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL}


def test_htj2k_decodes() -> None:
    pytest.skip(
        "no HTJ2K encoder available to make a test file: pylibjpeg-openjpeg 2.6 "
        "(OpenJPEG 2.5) encodes classic JPEG 2000 only and decodes HTJ2K; the decoder's "
        "presence is checked by test_every_accepted_syntax_has_a_decoder_and_a_test_or_a_reason"
    )


# -- real data -------------------------------------------------------------------------


@pytest.mark.shared_data
def test_lidc_idri_0001_loads_with_its_geometry(shared_data: Path) -> None:
    folder = shared_data / "data" / "lidc-idri-0001" / "ct"
    volume = load_series_folder(folder)
    assert volume.shape == (133, 512, 512)
    assert volume.spacing == pytest.approx((2.5, 0.703125, 0.703125))
    assert volume.modality == "CT"
    # The commonest value inside the scanned field (padding is -2048) is air, near
    # -1000 HU, and nothing lies beyond the CT range
    hu = volume.hu
    in_field = hu[hu > -1500]
    values, counts = np.unique(np.round(in_field / 10) * 10, return_counts=True)
    assert -1050 <= values[counts.argmax()] <= -950
    assert float(hu.min()) >= -2048
    assert float(hu.max()) <= 4000
    by_uid = {
        ds.SOPInstanceUID: ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir())
    }
    for k, uid in enumerate(volume.sop_instance_uids):
        ipp = [float(v) for v in by_uid[uid].ImagePositionPatient]
        np.testing.assert_allclose(volume.to_patient((k, 0, 0)), ipp, atol=1e-3)
