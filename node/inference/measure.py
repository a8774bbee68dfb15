"""Measurements of one finding's voxel mask, as a radiologist would take them.

Volume counts voxels. The long axis is the longest diameter on the axial slice where
it is longest (the key slice); the short axis is the longest diameter perpendicular
to it on the same slice, as Fleischner and Lung-RADS measure nodules. Diameters are
taken between pixel centres plus one pixel's extent along the axis (a one-pixel
nodule is one pixel wide).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.domain import Finding
from node.domain.volume import Volume

BoolArray = npt.NDArray[np.bool_]
Point = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class SliceAxes:
    """Long and short axis on one slice, as (j, i) pixel coordinates of their ends."""

    long_mm: float
    short_mm: float
    long_ends: tuple[tuple[float, float], tuple[float, float]]
    short_ends: tuple[tuple[float, float], tuple[float, float]]


def slice_axes(mask2d: BoolArray, row_mm: float, col_mm: float) -> SliceAxes | None:
    """The long and the perpendicular short axis of the mask on one slice."""
    outline = mask2d & ~ndimage.binary_erosion(mask2d)
    jj, ii = np.nonzero(outline)
    if jj.size == 0:
        return None
    points = np.stack([jj * row_mm, ii * col_mm], axis=1).astype(np.float64)
    if len(points) == 1:
        single = (float(jj[0]), float(ii[0]))
        size = float(min(row_mm, col_mm))
        return SliceAxes(size, size, (single, single), (single, single))
    # Longest chord between outline points (outlines are small: a few hundred points).
    diff = points[:, None, :] - points[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=2))
    a, b = np.unravel_index(int(np.argmax(dist)), dist.shape)
    long_vec = points[b] - points[a]
    long_len = float(np.linalg.norm(long_vec))
    unit = long_vec / long_len
    normal = np.array([-unit[1], unit[0]])
    # Short axis: for chords perpendicular to the long axis, bin the mask's pixels by
    # their position along the long axis and take the widest bin across it.
    mj, mi = np.nonzero(mask2d)
    pts = np.stack([mj * row_mm, mi * col_mm], axis=1).astype(np.float64)
    along = (pts - points[a]) @ unit
    across = (pts - points[a]) @ normal
    pixel = float(min(row_mm, col_mm))
    bins = np.floor(along / pixel).astype(np.int64)
    best = (0.0, 0, 0)
    order = np.argsort(bins, kind="stable")
    sorted_bins = bins[order]
    starts = np.flatnonzero(np.r_[True, sorted_bins[1:] != sorted_bins[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for start, end in zip(starts, ends, strict=True):
        members = order[start:end]
        low = members[int(np.argmin(across[members]))]
        high = members[int(np.argmax(across[members]))]
        width = float(across[high] - across[low])
        if width > best[0]:
            best = (width, int(low), int(high))
    short_len, low, high = best
    to_index = np.array([row_mm, col_mm])
    long_ends = (tuple(points[a] / to_index), tuple(points[b] / to_index))
    short_ends = (tuple(pts[low] / to_index), tuple(pts[high] / to_index))
    # A pixel adds its own size along each axis: one pixel step in that direction
    # (the row spacing along rows, the column spacing along columns, between them
    # on a slant), so square pixels add one pixel whatever the direction.
    long_pixel = float(np.hypot(unit[0] * row_mm, unit[1] * col_mm))
    short_pixel = float(np.hypot(normal[0] * row_mm, normal[1] * col_mm))
    return SliceAxes(
        long_len + long_pixel,
        short_len + short_pixel,
        (_pair(long_ends[0]), _pair(long_ends[1])),
        (_pair(short_ends[0]), _pair(short_ends[1])),
    )


def _pair(values: tuple[float, ...]) -> tuple[float, float]:
    return float(values[0]), float(values[1])


def measure_finding(
    volume: Volume,
    mask: BoolArray,
    *,
    label: str,
    tracking_id: str,
    score: float,
    attributes: dict[str, float] | None = None,
    offset: tuple[int, int, int] = (0, 0, 0),
) -> Finding | None:
    """A Finding for the voxels of `mask`; None if empty.

    `mask` covers the whole volume, or a box of it whose first voxel is `offset`
    (measuring in the box spares copying a mask the size of the volume).
    """
    local_k, local_j, local_i = np.nonzero(mask)
    if local_k.size == 0:
        return None
    k0, j0, i0 = offset
    kk, jj, ii = local_k + k0, local_j + j0, local_i + i0
    dz, dy, dx = volume.spacing
    centroid = volume.to_patient(np.array([kk.mean(), jj.mean(), ii.mean()]))
    best: tuple[int, SliceAxes] | None = None
    for k in range(int(local_k.min()), int(local_k.max()) + 1):
        axes = slice_axes(mask[k], dy, dx)
        if axes is not None and (best is None or axes.long_mm > best[1].long_mm):
            best = (k + k0, axes)
    assert best is not None  # the mask is not empty, so one slice has pixels
    key, axes = best

    def to_patient(ji: tuple[float, float]) -> Point:
        x, y, z = volume.to_patient([key, ji[0] + j0, ji[1] + i0])
        return float(x), float(y), float(z)

    uids = volume.sop_instance_uids
    return Finding(
        label=label,
        tracking_id=tracking_id,
        centroid_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
        volume_mm3=float(kk.size * dz * dy * dx),
        long_axis_mm=axes.long_mm,
        short_axis_mm=axes.short_mm,
        mean_hu=float(volume.hu[kk, jj, ii].mean()),
        score=float(np.clip(score, 0.0, 1.0)),
        key_slice=key,
        key_sop_instance_uid=uids[key] if key < len(uids) else "",
        long_axis_endpoints_mm=(to_patient(axes.long_ends[0]), to_patient(axes.long_ends[1])),
        short_axis_endpoints_mm=(to_patient(axes.short_ends[0]), to_patient(axes.short_ends[1])),
        voxel_count=int(kk.size),
        extent_slices=(int(kk.min()), int(kk.max())),
        attributes=dict(attributes or {}),
    )
