"""Run a 2D segmentation network slice by slice, only where it can matter.

A chest CT holds far more pixels than lungs: air around the patient, the table,
the abdomen below the diaphragm. The network is fully convolutional, so it can run
on a crop: the slices that hold air inside the body, cut to the box around that air
plus a margin of context. Outside the crop the lungs cannot be, and the output there
is zero. The saving and the agreement with the full-frame run are measured by
bench/inference.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.domain.volume import Volume

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

BODY_HU = -500.0  # tissue denser than this is body (or table)
AIR_HU = -400.0  # lung parenchyma and airways are less dense than this
_STEP = 4  # the crop is planned on every 4th pixel: a box, not a mask, is needed


Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Plan:
    """Groups of slices, each run on one in-plane box (j0, j1, i0, i1)."""

    groups: tuple[tuple[tuple[int, ...], Box], ...]

    @property
    def slices(self) -> tuple[int, ...]:
        """Every slice the network runs on."""
        return tuple(k for ks, _ in self.groups for k in ks)

    def pixels(self) -> int:
        """How many pixels the network sees under this plan."""
        return sum(len(ks) * (b[1] - b[0]) * (b[3] - b[2]) for ks, b in self.groups)


def full_plan(volume: Volume, batch: int = 4) -> Plan:
    """Every slice, whole."""
    k, rows, cols = volume.shape
    return Plan(
        tuple((tuple(range(s, min(k, s + batch))), (0, rows, 0, cols)) for s in range(0, k, batch))
    )


def plan_lung_crop(
    volume: Volume,
    *,
    batch: int = 4,
    margin_mm: float = 24.0,
    min_air_mm2: float = 300.0,
    min_pocket_mm2: float = 150.0,
    multiple: int = 8,
) -> Plan:
    """Slices with air enclosed by the body, in groups of `batch`, each group cut to
    the box around its air plus a margin of context.

    Enclosed air is what lungs and airways are made of; air outside the body, in the
    table or around it, is connected to the image border and is excluded by filling
    the body outline slice by slice. Pockets smaller than `min_pocket_mm2` (noise in
    fat, foam in the table, bowel gas specks) do not widen a box.
    """
    hu = volume.hu[:, ::_STEP, ::_STEP]
    _, rows, cols = volume.shape
    dy, dx = volume.spacing[1] * _STEP, volume.spacing[2] * _STEP
    body = hu > BODY_HU
    enclosed = np.zeros_like(body)
    min_pixels = min_pocket_mm2 / (dy * dx)
    air = fill_holes_per_slice(body) & (hu < AIR_HU)
    labels, count = ndimage.label(air, structure=_IN_PLANE)  # pockets, slice by slice
    if count:
        big = np.bincount(labels.ravel()) >= min_pixels
        big[0] = False
        enclosed = big[labels]
    area = enclosed.sum(axis=(1, 2)) * dy * dx
    keep = np.flatnonzero(area >= min_air_mm2)
    if keep.size == 0:
        return Plan(())
    # The lungs are one block of slices; a stray slice of bowel gas far below does not
    # matter for correctness (it only costs time), so the run is contiguous.
    slices = list(range(int(keep.min()), int(keep.max()) + 1))
    margin_j = int(np.ceil(margin_mm / volume.spacing[1]))
    margin_i = int(np.ceil(margin_mm / volume.spacing[2]))
    groups: list[tuple[tuple[int, ...], Box]] = []
    for start in range(0, len(slices), batch):
        ks = tuple(slices[start : start + batch])
        jj, ii = np.nonzero(enclosed[list(ks)].any(axis=0))
        if jj.size == 0:  # a slice inside the block without air of its own
            jj, ii = np.nonzero(enclosed[slices].any(axis=0))
        j0 = max(0, int(jj.min()) * _STEP - margin_j)
        j1 = min(rows, (int(jj.max()) + 1) * _STEP + margin_j)
        i0 = max(0, int(ii.min()) * _STEP - margin_i)
        i1 = min(cols, (int(ii.max()) + 1) * _STEP + margin_i)
        j0, j1 = _align(j0, j1, rows, multiple)
        i0, i1 = _align(i0, i1, cols, multiple)
        groups.append((ks, (j0, j1, i0, i1)))
    return Plan(tuple(groups))


def _align(start: int, stop: int, size: int, multiple: int) -> tuple[int, int]:
    """Grow [start, stop) to a length that is a multiple of `multiple`, inside [0, size)."""
    length = -(-(stop - start) // multiple) * multiple
    if length >= size:
        return 0, size
    stop = start + length
    if stop > size:
        start, stop = size - length, size
    return start, stop


def run_slices(
    volume: Volume,
    plan: Plan,
    infer: Callable[[FloatArray], FloatArray],
    *,
    add: float = 0.0,
    scale: float = 1.0,
    matrix: int | None = None,
    threshold: float | None = None,
) -> FloatArray:
    """The network's output for every voxel (zero outside the plan).

    `infer` maps a (N, 1, H, W) float32 batch to (N, 1, H, W) probabilities. With
    `matrix`, slices are resampled so that a full slice would be matrix x matrix
    (what the network was trained on), and the output is resampled back. With
    `threshold`, the result is the boolean mask (probability >= threshold), made
    batch by batch: a quarter of the memory of the probabilities.
    """
    out: npt.NDArray[Any] = np.zeros(
        volume.shape, dtype=np.float32 if threshold is None else np.bool_
    )
    rows = volume.shape[1]
    zoom = 1.0 if matrix is None or matrix == rows else matrix / rows
    for group, (j0, j1, i0, i1) in plan.groups:
        ks = list(group)
        crop = volume.hu[ks, j0:j1, i0:i1]
        x = (crop + np.float32(add)) * np.float32(scale)
        if zoom != 1.0:
            x = _resample_batch(x, zoom, multiple=8)
        probs = infer(x[:, None].astype(np.float32, copy=False))[:, 0]
        if zoom != 1.0:
            probs = _resample_to(probs, (j1 - j0, i1 - i0))
        out[ks, j0:j1, i0:i1] = probs if threshold is None else probs >= threshold
    return out


def _resample_batch(x: FloatArray, zoom: float, multiple: int) -> FloatArray:
    n = x.shape[0]
    zoomed = ndimage.zoom(x, (1, zoom, zoom), order=1)
    height = -(-zoomed.shape[1] // multiple) * multiple
    width = -(-zoomed.shape[2] // multiple) * multiple
    padded = np.zeros((n, height, width), dtype=np.float32)
    padded[:, : zoomed.shape[1], : zoomed.shape[2]] = zoomed
    return padded


def _resample_to(probs: FloatArray, shape: tuple[int, int]) -> FloatArray:
    h, w = shape
    factors = (1, h / probs.shape[1], w / probs.shape[2])
    out = ndimage.zoom(probs, factors, order=1)
    result = np.zeros((probs.shape[0], h, w), dtype=np.float32)
    result[:, : min(h, out.shape[1]), : min(w, out.shape[2])] = out[:, :h, :w]
    return result


def clean_lung_mask(probability: FloatArray | BoolArray, threshold: float = 0.5) -> BoolArray:
    """The two largest components of the thresholded output, with holes filled.

    The raw mask leaves specks in fat (dropped with the small components) and leaves
    nodules and vessels inside the lung as holes (filled slice by slice; a nodule on
    the pleura is a bite, not a hole: the nodule stage's search region handles it).
    """
    raw: BoolArray = (
        probability if probability.dtype == np.bool_ else probability >= threshold  # type: ignore[assignment]
    )
    result = np.zeros(raw.shape, dtype=bool)
    box = _box(raw)
    if box is None:
        return result  # everything happens inside the box around the raw mask
    inner = raw[box]
    # Components are chosen on a grid halved in-plane (four times fewer voxels); a
    # speck that vanishes there is dropped with the small ones anyway.
    coarse = inner[:, ::2, ::2]
    labels, count = ndimage.label(coarse)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:2]
    largest = sizes[order[0]]
    keep = [int(i) + 1 for i in order if sizes[i] >= 0.01 * largest]
    lookup = np.zeros(count + 1, dtype=bool)
    lookup[keep] = True
    chosen = ndimage.binary_dilation(lookup[labels], structure=_IN_PLANE)
    # The holes are filled inside the box of the kept lungs only, which is smaller
    # than the raw box when specks lie far out in the fat.
    kept = _box(chosen)
    if kept is None:
        return result
    k0, k1 = kept[0].start, kept[0].stop
    j0, j1 = kept[1].start * 2, min(inner.shape[1], kept[1].stop * 2)
    i0, i1 = kept[2].start * 2, min(inner.shape[2], kept[2].stop * 2)
    up = chosen[k0:k1, kept[1], kept[2]].repeat(2, axis=1).repeat(2, axis=2)
    lungs = inner[k0:k1, j0:j1, i0:i1] & up[:, : j1 - j0, : i1 - i0]
    outer = (box[0].start + k0, box[1].start + j0, box[2].start + i0)
    result[
        outer[0] : outer[0] + lungs.shape[0],
        outer[1] : outer[1] + lungs.shape[1],
        outer[2] : outer[2] + lungs.shape[2],
    ] = fill_holes_per_slice(lungs)
    return result


def _box(mask: BoolArray) -> tuple[slice, slice, slice] | None:
    """The box around the True voxels, from projections."""
    bounds = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return None
        bounds.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return bounds[0], bounds[1], bounds[2]


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def fill_holes_per_slice(mask: BoolArray) -> BoolArray:
    """Fill every hole of every axial slice at once.

    The background is labelled with in-plane connectivity only, so each slice's
    pieces are separate; a piece that does not reach the slice's edge is a hole.
    One labelling of the whole stack is much cheaper than a fill per slice.
    """
    labels, count = ndimage.label(~mask, structure=_IN_PLANE)
    if count == 0:
        return mask
    outside = np.zeros(count + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[np.unique(edge)] = True
    outside[0] = True  # label 0 is the mask itself
    filled: BoolArray = mask | ~outside[labels]
    return filled
