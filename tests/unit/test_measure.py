"""Measurements of a finding: volume, centroid and the long and short axes on the key
slice, in patient millimetres, checked on shapes whose true sizes are known."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from node.domain import Finding
from node.domain.volume import Volume
from node.inference.measure import measure_finding, slice_axes

BoolArray = npt.NDArray[np.bool_]
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
ORIGIN = (-100.0, 50.0, -300.0)


def volume_for(
    mask: BoolArray,
    spacing: tuple[float, float, float],
    orientation: tuple[tuple[float, float, float], tuple[float, float, float]] = AXIAL,
) -> Volume:
    """A volume at 40 HU inside `mask` and -800 HU elsewhere."""
    return Volume(
        hu=np.where(mask, 40.0, -800.0).astype(np.float32),
        origin=ORIGIN,
        spacing=spacing,
        row_direction=orientation[0],
        column_direction=orientation[1],
        sop_instance_uids=tuple(f"1.2.3.{k + 1}" for k in range(mask.shape[0])),
    )


def measure(volume: Volume, mask: BoolArray) -> Finding:
    finding = measure_finding(volume, mask, label="Nodule", tracking_id="nodule-1", score=0.8)
    assert finding is not None
    return finding


def sphere(
    diameter_mm: float, spacing: tuple[float, float, float], shape: tuple[int, int, int]
) -> tuple[BoolArray, tuple[int, int, int]]:
    """A voxelised ball centred on the middle voxel, and that voxel."""
    centre = (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    distance2 = (
        ((k - centre[0]) * spacing[0]) ** 2
        + ((j - centre[1]) * spacing[1]) ** 2
        + ((i - centre[2]) * spacing[2]) ** 2
    )
    return distance2 <= (diameter_mm / 2) ** 2, centre


def ellipse(
    long_mm: float, short_mm: float, degrees: float, pixel_mm: float, size: int
) -> BoolArray:
    """A filled ellipse centred on one slice, its long axis `degrees` from the i axis."""
    j, i = np.mgrid[:size, :size]
    y, x = (j - size // 2) * pixel_mm, (i - size // 2) * pixel_mm
    t = np.deg2rad(degrees)
    u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    return np.asarray((u / (long_mm / 2)) ** 2 + (v / (short_mm / 2)) ** 2 <= 1)


def vector(ends: tuple[tuple[float, ...], tuple[float, ...]]) -> npt.NDArray[np.float64]:
    return np.subtract(ends[1], ends[0])


def cosine(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- a sphere at anisotropic spacing -------------------------------------------------


def test_a_20_mm_sphere_measures_20_mm_with_its_volume_and_centre() -> None:
    # Given a 20 mm ball on 2.5 mm slices of 0.7 mm pixels, away from the origin
    spacing = (2.5, 0.7, 0.7)
    mask, centre = sphere(20.0, spacing, (15, 41, 41))
    volume = volume_for(mask, spacing)
    # When it is measured
    finding = measure(volume, mask)
    # Then both axes are 20 mm to within a pixel
    assert finding.long_axis_mm == pytest.approx(20.0, abs=0.7)
    assert finding.short_axis_mm == pytest.approx(20.0, abs=0.7)
    assert finding.short_axis_mm <= finding.long_axis_mm
    # And the volume counts voxels, close to the true ball
    voxels = int(mask.sum())
    assert finding.voxel_count == voxels
    assert finding.volume_mm3 == pytest.approx(voxels * 2.5 * 0.7 * 0.7, rel=1e-9)
    assert finding.volume_mm3 == pytest.approx(4 / 3 * np.pi * 10**3, rel=0.05)
    # And the centroid is the centre, in patient coordinates
    expected = (ORIGIN[0] + centre[2] * 0.7, ORIGIN[1] + centre[1] * 0.7, ORIGIN[2] + 7 * 2.5)
    assert finding.centroid_mm == pytest.approx(expected, abs=1e-6)
    # And the key slice is the middle one
    assert finding.key_slice == centre[0] == 7
    assert finding.key_sop_instance_uid == "1.2.3.8"
    assert finding.extent_slices == (3, 11)
    assert finding.mean_hu == pytest.approx(40.0)
    assert finding.score == pytest.approx(0.8)


def test_the_axes_lie_in_the_key_slice_plane() -> None:
    spacing = (2.5, 0.7, 0.7)
    mask, _ = sphere(20.0, spacing, (15, 41, 41))
    finding = measure(volume_for(mask, spacing), mask)
    slice_z = ORIGIN[2] + finding.key_slice * 2.5
    ends = [*finding.long_axis_endpoints_mm, *finding.short_axis_endpoints_mm]
    assert [p[2] for p in ends] == pytest.approx([slice_z] * 4)
    long_vec = vector(finding.long_axis_endpoints_mm)
    assert float(np.linalg.norm(long_vec)) + 0.7 == pytest.approx(finding.long_axis_mm)


def test_on_coronal_slices_the_axes_lie_in_the_key_slice_plane_too() -> None:
    # Coronal: rows run along x, columns down along -z, slices step along +y
    spacing = (2.5, 0.7, 0.7)
    mask, centre = sphere(20.0, spacing, (15, 41, 41))
    volume = volume_for(mask, spacing, CORONAL)
    finding = measure(volume, mask)
    slice_y = ORIGIN[1] + finding.key_slice * 2.5
    ends = [*finding.long_axis_endpoints_mm, *finding.short_axis_endpoints_mm]
    assert [p[1] for p in ends] == pytest.approx([slice_y] * 4)
    expected = (
        ORIGIN[0] + centre[2] * 0.7,
        ORIGIN[1] + centre[0] * 2.5,
        ORIGIN[2] - centre[1] * 0.7,
    )
    assert finding.centroid_mm == pytest.approx(expected, abs=1e-6)


# -- ellipses on one slice ---------------------------------------------------------


@pytest.mark.parametrize("degrees", [0.0, 45.0, 30.0])
def test_an_ellipse_of_40_by_20_mm_has_those_axes_perpendicular(degrees: float) -> None:
    pixel = 0.5
    mask2d = ellipse(40.0, 20.0, degrees, pixel, 121)
    axes = slice_axes(mask2d, pixel, pixel)
    assert axes is not None
    assert axes.long_mm == pytest.approx(40.0, abs=pixel)
    assert axes.short_mm == pytest.approx(20.0, abs=pixel)
    long_vec, short_vec = vector(axes.long_ends), vector(axes.short_ends)
    assert abs(cosine(long_vec, short_vec)) < 0.05, "the short axis is perpendicular"
    # The long axis points along the ellipse (ends are (j, i): i is x, j is y)
    direction = np.array([np.sin(np.deg2rad(degrees)), np.cos(np.deg2rad(degrees))])
    assert abs(cosine(long_vec, direction)) > 0.99
    # Every end point is a pixel of the ellipse
    for j, i in [*axes.long_ends, *axes.short_ends]:
        assert mask2d[round(j), round(i)]


def test_an_ellipse_in_a_volume_is_measured_in_millimetres_on_its_slice() -> None:
    mask = np.zeros((3, 121, 121), dtype=bool)
    mask[1] = ellipse(40.0, 20.0, 45.0, 0.5, 121)
    finding = measure(volume_for(mask, (3.0, 0.5, 0.5)), mask)
    assert finding.key_slice == 1 and finding.extent_slices == (1, 1)
    assert finding.long_axis_mm == pytest.approx(40.0, abs=0.5)
    assert finding.short_axis_mm == pytest.approx(20.0, abs=0.5)
    long_vec = vector(finding.long_axis_endpoints_mm)
    short_vec = vector(finding.short_axis_endpoints_mm)
    assert abs(cosine(long_vec, short_vec)) < 0.05
    assert long_vec[2] == short_vec[2] == 0.0


# -- the smallest and the empty ----------------------------------------------------


def test_a_single_voxel_is_one_pixel_across() -> None:
    mask = np.zeros((3, 5, 5), dtype=bool)
    mask[2, 1, 3] = True
    volume = volume_for(mask, (2.0, 0.7, 0.7))
    finding = measure(volume, mask)
    assert finding.long_axis_mm == finding.short_axis_mm == pytest.approx(0.7)
    assert finding.volume_mm3 == pytest.approx(2.0 * 0.7 * 0.7)
    assert finding.voxel_count == 1 and finding.key_slice == 2
    point = (ORIGIN[0] + 3 * 0.7, ORIGIN[1] + 1 * 0.7, ORIGIN[2] + 2 * 2.0)
    assert finding.centroid_mm == pytest.approx(point)
    assert finding.long_axis_endpoints_mm[0] == pytest.approx(point)
    assert finding.long_axis_endpoints_mm[1] == pytest.approx(point)


def test_an_empty_mask_is_no_finding() -> None:
    mask = np.zeros((2, 4, 4), dtype=bool)
    assert (
        measure_finding(volume_for(mask, (1, 1, 1)), mask, label="N", tracking_id="t", score=1)
        is None
    )
    assert slice_axes(mask[0], 1.0, 1.0) is None
