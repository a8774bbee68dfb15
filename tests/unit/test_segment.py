"""Slice-by-slice segmentation: the crop plan finds the lungs' slices and box, the
network runs only there with the same output as a full-frame run, and the raw mask
is cleaned to two lungs without specks or holes."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from node.domain.volume import Volume
from node.inference.segment import Plan, clean_lung_mask, full_plan, plan_lung_crop, run_slices

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]

SHAPE = (24, 192, 192)  # slices, rows, columns
SPACING = (2.5, 1.0, 1.0)
LUNG_SLICES = range(6, 18)
MARGIN = 24  # plan_lung_crop's default margin, in pixels at 1 mm
STEP = 4  # the crop is planned on every 4th pixel


def phantom(*, gap: range = range(0), specks: bool = False) -> tuple[Volume, BoolArray]:
    """A body ellipse at 40 HU in air, two dark ellipsoidal lungs on LUNG_SLICES.

    `gap`: slices inside that block left without lungs; `specks`: small air pockets in
    the body, far from the lungs, on a lung slice and on a slice without lungs.
    """
    k, j, i = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    body = ((j - 96) / 80) ** 2 + ((i - 96) / 90) ** 2 <= 1
    on_lung_slices = np.isin(k, [s for s in LUNG_SLICES if s not in gap])
    lungs = np.zeros(SHAPE, dtype=bool)
    for centre_i in (76, 116):
        ellipsoid = ((k - 11.5) / 9) ** 2 + ((j - 96) / 20) ** 2 + ((i - centre_i) / 12) ** 2
        lungs |= (ellipsoid <= 1) & on_lung_slices
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    hu[np.broadcast_to(body, SHAPE)] = 40.0
    hu[lungs] = -850.0
    if specks:
        hu[[2, 8], 28:33, 94:99] = -1000.0  # 25 mm2: bowel gas, foam
    volume = Volume(
        hu=hu,
        origin=(-96.0, -96.0, -30.0),
        spacing=SPACING,
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
    )
    return volume, lungs


def dark(batch: FloatArray) -> FloatArray:
    """A stand-in network: 1 where the input is below 300 (HU < -724 with add=1024)."""
    assert batch.ndim == 4 and batch.shape[1] == 1 and batch.dtype == np.float32
    return (batch < 300).astype(np.float32)


# -- the crop plan -----------------------------------------------------------------


def test_the_plan_runs_only_the_lung_slices_in_batches() -> None:
    volume, lungs = phantom()
    plan = plan_lung_crop(volume, batch=4)
    assert plan.slices == tuple(LUNG_SLICES)
    assert [ks for ks, _ in plan.groups] == [(6, 7, 8, 9), (10, 11, 12, 13), (14, 15, 16, 17)]
    assert set(plan.slices) == set(np.flatnonzero(lungs.any(axis=(1, 2))))


def test_each_box_holds_the_lungs_with_a_margin_in_multiples_of_8_inside_the_image() -> None:
    volume, lungs = phantom()
    rows, cols = SHAPE[1:]
    plan = plan_lung_crop(volume, batch=4)
    for ks, (j0, j1, i0, i1) in plan.groups:
        assert 0 <= j0 < j1 <= rows and 0 <= i0 < i1 <= cols
        assert (j1 - j0) % 8 == 0 and (i1 - i0) % 8 == 0
        jj, ii = np.nonzero(lungs[list(ks)].any(axis=0))
        # the lungs plus the margin, less what planning on a coarse grid can miss
        assert j0 <= jj.min() - (MARGIN - STEP + 1) and j1 >= jj.max() + 1 + MARGIN - STEP
        assert i0 <= ii.min() - (MARGIN - STEP + 1) and i1 >= ii.max() + 1 + MARGIN - STEP
        # and not much more: the margin, the coarse grid and the rounding to 8
        assert (j1 - j0) <= (jj.max() + 1 - jj.min()) + 2 * (MARGIN + STEP) + 8
        assert (i1 - i0) <= (ii.max() + 1 - ii.min()) + 2 * (MARGIN + STEP) + 8
    assert plan.pixels() < lungs.size / 4, "the crop saves most of the work"


def test_small_air_specks_do_not_widen_the_box_or_add_slices() -> None:
    clean, _ = phantom()
    speckled, _ = phantom(specks=True)
    assert plan_lung_crop(speckled) == plan_lung_crop(clean)
    assert plan_lung_crop(speckled, min_pocket_mm2=0) != plan_lung_crop(clean), (
        "the specks are big enough to widen the box if they counted"
    )


def test_a_slice_inside_the_block_without_air_is_still_run() -> None:
    # Given lungs missing from slices 10-13 (one whole batch)
    volume, lungs = phantom(gap=range(10, 14))
    assert not lungs[10:14].any()
    # When the crop is planned
    plan = plan_lung_crop(volume, batch=4)
    # Then the block stays contiguous, and the empty batch gets the box of the others
    assert plan.slices == tuple(LUNG_SLICES)
    boxes = dict(plan.groups)
    assert boxes[(10, 11, 12, 13)] == boxes[(6, 7, 8, 9)]


def test_a_volume_without_air_inside_a_body_plans_nothing() -> None:
    volume, _ = phantom()
    no_lungs = Volume(
        hu=np.where(volume.hu < -900, -1000.0, 40.0).astype(np.float32),  # lungs filled in
        origin=volume.origin,
        spacing=volume.spacing,
        row_direction=volume.row_direction,
        column_direction=volume.column_direction,
    )
    plan = plan_lung_crop(no_lungs)
    assert plan == Plan(()) and plan.slices == () and plan.pixels() == 0


def test_the_full_plan_covers_every_voxel() -> None:
    volume, _ = phantom()
    plan = full_plan(volume, batch=5)
    assert plan.slices == tuple(range(SHAPE[0]))
    assert [len(ks) for ks, _ in plan.groups] == [5, 5, 5, 5, 4]
    assert {box for _, box in plan.groups} == {(0, SHAPE[1], 0, SHAPE[2])}
    assert plan.pixels() == volume.hu.size


# -- running the network on the plan -----------------------------------------------


def test_run_slices_writes_only_inside_the_plan_and_agrees_with_a_full_run() -> None:
    volume, lungs = phantom()
    plan = plan_lung_crop(volume, batch=4)
    seen: list[tuple[int, ...]] = []

    def infer(batch: FloatArray) -> FloatArray:
        seen.append(batch.shape)
        return dark(batch)

    cropped = run_slices(volume, plan, infer, add=1024)
    full = run_slices(volume, full_plan(volume), dark, add=1024)
    inside = np.zeros(SHAPE, dtype=bool)
    for ks, (j0, j1, i0, i1) in plan.groups:
        inside[list(ks), j0:j1, i0:i1] = True
    assert cropped.dtype == np.float32 and cropped.shape == SHAPE
    assert np.array_equal(cropped[inside], full[inside])
    assert not cropped[~inside].any(), "zero outside the plan"
    assert full[~inside].any(), "the full run does see the air outside the body"
    assert cropped[lungs].all(), "every lung voxel is inside the crop"
    assert seen == [(4, 1, j1 - j0, i1 - i0) for _, (j0, j1, i0, i1) in plan.groups]


def test_run_slices_applies_add_and_scale_before_the_network() -> None:
    volume, _ = phantom()
    inputs: list[FloatArray] = []

    def infer(batch: FloatArray) -> FloatArray:
        inputs.append(batch.copy())
        return np.zeros_like(batch)

    plan = Plan((((3,), (0, 8, 0, 8)),))
    run_slices(volume, plan, infer, add=1024, scale=0.5)
    [batch] = inputs
    assert np.array_equal(batch[0, 0], (volume.hu[3, :8, :8] + 1024) * 0.5)


# -- cleaning the raw mask ---------------------------------------------------------


def test_clean_lung_mask_keeps_two_lungs_drops_a_speck_and_fills_a_hole() -> None:
    # Given a raw output with two lungs, a speck in fat and a vessel hole in one lung
    _, lungs = phantom()
    probability = np.where(lungs, 0.9, 0.1).astype(np.float32)
    probability[8, 28:31, 94:97] = 0.8  # the speck, on a lung slice
    probability[11, 94:99, 74:79] = 0.2  # the hole, inside the left lung
    assert lungs[11, 94:99, 74:79].all()
    # When it is cleaned
    cleaned = clean_lung_mask(probability, 0.5)
    # Then the lungs are whole and nothing else is left
    assert cleaned.dtype == np.bool_ and cleaned.shape == SHAPE
    assert np.array_equal(cleaned, lungs)


def test_clean_lung_mask_of_nothing_is_empty() -> None:
    probability = np.zeros((3, 8, 8), dtype=np.float32)
    assert not clean_lung_mask(probability).any()


@pytest.mark.parametrize("threshold", [0.5, 0.95])
def test_clean_lung_mask_uses_the_threshold(threshold: float) -> None:
    _, lungs = phantom()
    probability = np.where(lungs, 0.9, 0.0).astype(np.float32)
    assert clean_lung_mask(probability, threshold).any() == (threshold <= 0.9)
