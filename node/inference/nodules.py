"""Stage 2 of the reference model: nodule candidates inside the lungs.

The method, documented in models/lung-nodules/README.md:

1. Search region. The lung mask, closed slice by slice for each lung with a disc
   ("rolling ball"), so that a nodule on the pleura, which the lung network leaves
   out as a bite in the mask, is inside the region again.
2. Blob filter (ONNX graph blob-filter.onnx, so it runs where the model runs):
   Gaussian smoothing at several scales, the Hessian, its eigenvalues, and the dot
   and line responses of Li, Sone and Doi (Med Phys 2003), scale-normalised.
   A sphere of radius r answers most at sigma = r / sqrt(3); a vessel, a tube,
   answers the line filter more than the dot filter.
3. Candidates: local maxima of the dot response inside the search region, strong
   enough for a solid nodule, the strongest first, one per neighbourhood.
4. Segmentation of each candidate: voxels denser than a threshold halfway between
   lung and the candidate's core, connected to the peak, inside a sphere around it
   and inside the search region; an opening detaches vessels that touch it.
5. Shape test and score: elongated or vessel-like components are dropped; the score
   combines the dot response, how spherical the component is, and dot over line.

Every threshold is stated in physical units (HU, mm) and was chosen on physical
grounds and the synthetic phantom, not on any one real case.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.domain.volume import Volume

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
BlobFilter = Callable[[dict[str, FloatArray]], tuple[FloatArray, FloatArray]]


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The detector's parameters, from the model package's `parameters`."""

    scales_mm: tuple[float, ...] = (1.5, 2.5, 4.0, 6.0, 9.0)
    min_diameter_mm: float = 4.0
    max_diameter_mm: float = 40.0
    closing_radius_mm: float = 15.0
    min_dot: float = 70.0  # scale-normalised HU: a resolved solid nodule gives 100 to 200
    max_elongation: float = 3.0
    max_line_over_dot: float = 2.0
    max_candidates: int = 1000
    max_findings: int = 10
    min_score: float = 0.5
    lung_hu: float = -850.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A segmented candidate with what the score was computed from."""

    mask_box: tuple[slice, slice, slice]
    mask: BoolArray
    peak: tuple[int, int, int]
    scale_mm: float
    dot: float
    line: float
    elongation: float
    sphericity: float
    diameter_mm: float
    score: float
    features: dict[str, float] = field(default_factory=dict)


def search_region(
    lungs: BoolArray, spacing: tuple[float, float, float], radius_mm: float
) -> BoolArray:
    """The lung mask with each lung closed slice by slice by a disc of `radius_mm`.

    Only the outer (costal) side of each lung is closed: what the closing adds
    nearer the middle of the chest than the lung's own centre is the hilum or the
    heart's border, full of vessels, not nodules missed by the lung network. The
    closing runs on an in-plane grid reduced 4 times (a 15 mm disc does not need
    0.7 mm pixels); what it adds is brought back to full resolution and joined to
    the mask, so the lungs themselves keep their full-resolution edge.
    """
    region = lungs.copy()
    outer = _bounding_box(lungs)
    if outer is None:
        return region
    step = 4
    # Grow the box by the radius (the closing reaches that far) on the coarse grid.
    dy, dx = spacing[1] * step, spacing[2] * step
    pad_j = math.ceil(radius_mm / dy) + 1
    pad_i = math.ceil(radius_mm / dx) + 1
    rows, cols = lungs.shape[1], lungs.shape[2]
    j0 = outer[1].start - outer[1].start % step
    i0 = outer[2].start - outer[2].start % step
    # Each lung is closed on its own, slice by slice: pieces are labelled in-plane at
    # full resolution (the two lungs may touch through a line of one or two pixels,
    # which a coarse grid would merge), so the gap between them is never bridged.
    labels = ndimage.label(
        lungs[outer[0], j0 : outer[1].stop, i0 : outer[2].stop], structure=_IN_PLANE
    )[0][:, ::step, ::step]
    min_pixels = 100.0 / (dy * dx)  # pieces under 1 cm2 are left as they are
    # The middle of the chest on each slice: the centre of the lungs' pixels there.
    centres: list[tuple[float, float]] = []
    for plane in labels > 0:
        pj, pi = np.nonzero(plane)
        centres.append((float(pj.mean()), float(pi.mean())) if pj.size else (0.0, 0.0))
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        for k in range(box[0].start, box[0].stop):
            part = labels[k, box[1], box[2]] == label
            if part.sum() < min_pixels:
                continue
            pj, pi = np.nonzero(part)
            lung_j, lung_i = pj.mean() + box[1].start, pi.mean() + box[2].start
            mid_j, mid_i = centres[k]
            reach = math.hypot((lung_j - mid_j) * dy, (lung_i - mid_i) * dx)
            padded = np.pad(part, ((pad_j, pad_j), (pad_i, pad_i)))
            # Closing by a disc through distance transforms: dilate, then erode.
            outside = ndimage.distance_transform_edt(~padded, sampling=(dy, dx))
            inside = ndimage.distance_transform_edt(outside <= radius_mm, sampling=(dy, dx))
            closed = inside > radius_mm
            jj = (np.arange(closed.shape[0]) + box[1].start - pad_j - mid_j) * dy
            ii = (np.arange(closed.shape[1]) + box[2].start - pad_i - mid_i) * dx
            closed &= np.hypot(jj[:, None], ii[None, :]) >= reach  # the outer side only
            full = closed.repeat(step, axis=0).repeat(step, axis=1)
            top = j0 + (box[1].start - pad_j) * step
            left = i0 + (box[2].start - pad_i) * step
            cj0, ci0 = max(0, -top), max(0, -left)
            top, left = max(0, top), max(0, left)
            h = min(full.shape[0] - cj0, rows - top)
            w = min(full.shape[1] - ci0, cols - left)
            kk = outer[0].start + k
            region[kk, top : top + h, left : left + w] |= full[cj0 : cj0 + h, ci0 : ci0 + w]
    return region


def gaussian_kernel(sigma_mm: float, spacing_mm: float) -> FloatArray:
    """A normalised 1D Gaussian sampled at the voxel spacing, +-3 sigma."""
    sigma = sigma_mm / spacing_mm
    half = max(1, math.ceil(3 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    result: FloatArray = (kernel / kernel.sum()).astype(np.float32)
    return result


def blob_responses(
    hu: FloatArray,
    spacing: tuple[float, float, float],
    sigma_mm: float,
    run: BlobFilter,
) -> tuple[FloatArray, FloatArray]:
    """Dot and line responses at one scale, on the same grid as `hu`."""
    kz = gaussian_kernel(sigma_mm, spacing[0])
    ky = gaussian_kernel(sigma_mm, spacing[1])
    kx = gaussian_kernel(sigma_mm, spacing[2])
    # The graph convolves without padding and loses (K - 1) / 2 + 1 voxels per side.
    pz, py, px = len(kz) // 2 + 1, len(ky) // 2 + 1, len(kx) // 2 + 1
    padded = np.pad(hu, ((pz, pz), (py, py), (px, px)), mode="edge")
    dot, line = run(
        {
            "volume": padded[None, None].astype(np.float32, copy=False),
            "kz": kz.reshape(1, 1, -1, 1, 1),
            "ky": ky.reshape(1, 1, 1, -1, 1),
            "kx": kx.reshape(1, 1, 1, 1, -1),
            "spacing": np.asarray(spacing, dtype=np.float32),
            "sigma": np.asarray([sigma_mm], dtype=np.float32),
        }
    )
    return dot[0, 0], line[0, 0]


@dataclass(frozen=True, slots=True)
class _Scale:
    """One scale's responses on its own grid (in-plane stride 1, 2, 4 or 8)."""

    sigma_mm: float
    stride: int
    dot: FloatArray
    line: FloatArray


def _stride_for(sigma_mm: float, spacing: tuple[float, float, float]) -> int:
    """The coarsest in-plane stride on which a Gaussian of sigma is well sampled.

    A Gaussian of sigma s is well sampled on pixels up to s / 1.6, so coarse scales
    run on a grid reduced in-plane by 2, 4 or 8 (block means): a quarter of the
    work or less per coarse scale.
    """
    pixel = max(spacing[1], spacing[2])
    stride = 1
    while sigma_mm >= 1.6 * (stride * 2) * pixel and stride < 8:
        stride *= 2
    return stride


def _halve(hu: FloatArray) -> FloatArray:
    """Means of 2x2 in-plane blocks (odd edges dropped): the next level of a pyramid."""
    y2, x2 = hu.shape[1] - hu.shape[1] % 2, hu.shape[2] - hu.shape[2] % 2
    half: FloatArray = (
        hu[:, 0:y2:2, 0:x2:2]
        + hu[:, 1:y2:2, 0:x2:2]
        + hu[:, 0:y2:2, 1:x2:2]
        + hu[:, 1:y2:2, 1:x2:2]
    ) * np.float32(0.25)
    return half


def _all_scales(
    hu: FloatArray,
    spacing: tuple[float, float, float],
    scales_mm: tuple[float, ...],
    run: BlobFilter,
) -> list[_Scale]:
    """Every scale's responses, each on its grid; the grids are built as a pyramid."""
    pyramid = {1: hu}
    results = []
    for sigma in scales_mm:
        stride = _stride_for(sigma, spacing)
        level = 1
        while level < stride:
            if level * 2 not in pyramid:
                pyramid[level * 2] = _halve(pyramid[level])
            level *= 2
        grid = (spacing[0], spacing[1] * stride, spacing[2] * stride)
        dot, line = blob_responses(pyramid[stride], grid, sigma, run)
        results.append(_Scale(sigma, stride, dot, line))
    return results


def _max_over_scales(shape: tuple[int, ...], scales: list[_Scale]) -> FloatArray:
    """The strongest dot response over all scales, on the full grid.

    Coarse grids are folded into finer ones through broadcast views (never blown
    up), coarsest first, so the full grid is touched twice at most.
    """
    by_stride: dict[int, FloatArray] = {}
    for scale in scales:
        if scale.stride in by_stride:
            np.maximum(by_stride[scale.stride], scale.dot, out=by_stride[scale.stride])
        else:
            by_stride[scale.stride] = scale.dot.copy()
    strides = sorted(by_stride, reverse=True)
    for coarse, fine in itertools.pairwise(strides):
        factor = coarse // fine
        target = by_stride[fine]
        z, y, x = target.shape
        y2 = min(y - y % factor, by_stride[coarse].shape[1] * factor)
        x2 = min(x - x % factor, by_stride[coarse].shape[2] * factor)
        view = target[:, :y2, :x2].reshape(z, y2 // factor, factor, x2 // factor, factor)
        source = by_stride[coarse][:, : y2 // factor, : x2 // factor]
        np.maximum(view, source[:, :, None, :, None], out=view)
    finest = by_stride[strides[-1]]
    if strides[-1] == 1:
        return finest
    best = np.zeros(shape, dtype=np.float32)  # no full-resolution scale: fold it in
    s = strides[-1]
    z, y, x = shape
    y2, x2 = min(y - y % s, finest.shape[1] * s), min(x - x % s, finest.shape[2] * s)
    view = best[:, :y2, :x2].reshape(z, y2 // s, s, x2 // s, s)
    np.maximum(view, finest[:, : y2 // s, None, : x2 // s, None], out=view)
    return best


def _at_peak(scales: list[_Scale], peak: tuple[int, int, int]) -> tuple[float, float, float]:
    """(dot, line, sigma) of the scale that answers most at the peak."""
    k, j, i = peak
    best = (0.0, 0.0, scales[0].sigma_mm)
    for scale in scales:
        s = scale.stride
        jj, ii = j // s, i // s
        if jj >= scale.dot.shape[1] or ii >= scale.dot.shape[2]:
            continue
        dot = float(scale.dot[k, jj, ii])
        if dot > best[0]:
            best = (dot, float(scale.line[k, jj, ii]), scale.sigma_mm)
    return best


def _bounding_box(mask: BoolArray) -> tuple[slice, slice, slice] | None:
    """The box around the True voxels, from projections (cheaper than find_objects)."""
    bounds = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        bounds.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return bounds[0], bounds[1], bounds[2]


def detect_nodules(
    volume: Volume,
    lungs: BoolArray,
    run: BlobFilter,
    settings: DetectorSettings | None = None,
) -> tuple[list[Candidate], BoolArray]:
    """Candidates kept as findings (best first) and the search region used."""
    settings = settings or DetectorSettings()
    spacing = volume.spacing
    region = search_region(lungs, spacing, settings.closing_radius_mm)
    box = _bounding_box(region)
    if box is None:
        return [], region
    hu = volume.hu[box]
    inside = region[box]
    scales = _all_scales(hu, spacing, settings.scales_mm, run)
    best_dot = _max_over_scales(hu.shape, scales)
    peaks = _peaks(best_dot, inside, settings)
    # The score is a logistic of the evidence: candidates that cannot reach min_score
    # even with the best possible shape are not segmented at all.
    min_evidence = (
        -math.inf
        if settings.min_score <= 0
        else math.log(settings.min_score / (1 - settings.min_score))
    )
    kept: list[Candidate] = []
    taken = np.zeros(hu.shape, dtype=bool)
    for peak in peaks:
        if taken[peak]:
            continue
        dot, line, sigma = _at_peak(scales, peak)
        if line > settings.max_line_over_dot * dot:
            continue  # a tube (vessel) answers the line filter more than the dot filter
        if _evidence(dot, line, 1.0, 1.0, 0.0, settings) < min_evidence:
            continue  # even a perfect sphere with this response would score too low
        candidate = _segment(volume, hu, inside, peak, sigma, dot, line, settings)
        if candidate is None:
            continue
        # Peaks on or right beside a segmented candidate are the same object.
        taken[candidate.mask_box] |= _dilate(candidate.mask, 2 * max(spacing), spacing)
        if candidate.score >= settings.min_score:
            kept.append(_to_volume_frame(candidate, box))
    kept.sort(key=lambda c: -c.score)
    return kept[: settings.max_findings], region


def _peaks(
    dot: FloatArray, inside: BoolArray, settings: DetectorSettings
) -> list[tuple[int, int, int]]:
    """Local maxima of the dot response inside the region, strongest first.

    Only voxels above min_dot are examined (a few thousand of millions): each is
    compared with its 3 x 5 x 5 neighbourhood, gathered by index.
    """
    kk, jj, ii = np.nonzero((dot >= settings.min_dot) & inside)
    if kk.size == 0:
        return []
    values = dot[kk, jj, ii]
    z, y, x = dot.shape
    is_max = np.ones(kk.size, dtype=bool)
    for dk in (-1, 0, 1):
        for dj in range(-2, 3):
            for di in range(-2, 3):
                if dk == dj == di == 0:
                    continue
                nk, nj, ni = kk + dk, jj + dj, ii + di
                valid = (nk >= 0) & (nk < z) & (nj >= 0) & (nj < y) & (ni >= 0) & (ni < x)
                neighbour = np.where(
                    valid,
                    dot[np.clip(nk, 0, z - 1), np.clip(nj, 0, y - 1), np.clip(ni, 0, x - 1)],
                    -np.inf,
                )
                is_max &= values >= neighbour
    kk, jj, ii, values = kk[is_max], jj[is_max], ii[is_max], values[is_max]
    order = np.argsort(-values, kind="stable")[: settings.max_candidates]
    return [(int(kk[n]), int(jj[n]), int(ii[n])) for n in order]


def _segment(
    volume: Volume,
    hu: FloatArray,
    inside: BoolArray,
    peak: tuple[int, int, int],
    scale_mm: float,
    peak_dot: float,
    peak_line: float,
    settings: DetectorSettings,
) -> Candidate | None:
    """Grow the candidate from its peak; None when it is not nodule-shaped."""
    dz, dy, dx = volume.spacing
    radius_mm = min(settings.max_diameter_mm / 2, max(3.0, 2.2 * math.sqrt(3) * scale_mm))
    rz, ry, rx = (math.ceil(radius_mm / s) for s in (dz, dy, dx))
    k, j, i = peak
    box = (
        slice(max(0, k - rz), min(hu.shape[0], k + rz + 1)),
        slice(max(0, j - ry), min(hu.shape[1], j + ry + 1)),
        slice(max(0, i - rx), min(hu.shape[2], i + rx + 1)),
    )
    local = hu[box]
    zz, yy, xx = np.ogrid[box[0], box[1], box[2]]
    r2 = ((zz - k) * dz) ** 2 + ((yy - j) * dy) ** 2 + ((xx - i) * dx) ** 2
    sphere = r2 <= radius_mm**2
    rim = sphere & (r2 > (radius_mm - max(dz, dy, dx)) ** 2)  # the sphere's outer shell
    core = float(
        np.median(
            local[
                _ball(
                    local.shape,
                    (k - box[0].start, j - box[1].start, i - box[2].start),
                    (dz, dy, dx),
                    max(1.0, 0.5 * scale_mm),
                )
            ]
        )
    )
    if core < settings.lung_hu + 250:  # not denser than lung: a ground-glass speck or noise
        return None
    threshold = (core + settings.lung_hu) / 2
    dense = (local > threshold) & sphere & inside[box]
    seed = (k - box[0].start, j - box[1].start, i - box[2].start)
    labels, count = ndimage.label(dense)
    opening_mm = 0.0
    if labels[seed] == 0 or (labels[rim] == labels[seed]).any():
        # Attached to something that leaves the sphere (a vessel, the wall): an
        # opening by a small ball detaches structures thinner than it.
        opening_mm = max(1.0, min(3.0, 0.5 * scale_mm))
        labels, count = ndimage.label(_open(dense, opening_mm, (dz, dy, dx)))
    label = labels[seed]
    if label == 0:
        if count == 0:
            return None
        # The opening may have moved the edge off the peak: take the nearest component.
        distance, nearest = ndimage.distance_transform_edt(
            labels == 0, sampling=(dz, dy, dx), return_indices=True
        )
        if distance[seed] > 2 * max(dz, dy, dx):
            return None
        label = labels[tuple(int(n[seed]) for n in nearest)]
    mask = labels == label
    # How much of the candidate lies on the shell of its search sphere: a few voxels
    # for a nodule with a vessel stump, whole cross-sections for a vessel segment.
    rim_share = float((mask & rim).sum()) / max(1, int(mask.sum()))
    touches_sphere = rim_share > 0
    if opening_mm:
        # The opening also shaved the nodule's own margin (spicules, lobulation);
        # one dilation by the same ball inside the dense voxels gives that margin back
        # without reaching the vessels the opening cut off further out.
        mask = _dilate(mask, opening_mm, (dz, dy, dx)) & dense
    voxels = int(mask.sum())
    volume_mm3 = voxels * dz * dy * dx
    diameter = (6 * volume_mm3 / math.pi) ** (1 / 3)
    if diameter < settings.min_diameter_mm or diameter > settings.max_diameter_mm:
        return None
    elongation = _elongation(mask, (dz, dy, dx))
    surface = voxels - int(ndimage.binary_erosion(mask).sum())
    sphericity = _sphericity(mask, (dz, dy, dx), volume_mm3)
    if elongation > settings.max_elongation:
        return None
    evidence = _evidence(peak_dot, peak_line, sphericity, elongation, rim_share, settings)
    score = 1.0 / (1.0 + math.exp(-evidence))
    return Candidate(
        mask_box=box,
        mask=mask,
        peak=peak,
        scale_mm=scale_mm,
        dot=peak_dot,
        line=peak_line,
        elongation=elongation,
        sphericity=sphericity,
        diameter_mm=diameter,
        score=score,
        features={
            "dot": peak_dot,
            "line": peak_line,
            "elongation": elongation,
            "sphericity": sphericity,
            "scale_mm": scale_mm,
            "core_hu": core,
            "surface_voxels": float(surface),
            "touches_search_sphere": float(touches_sphere),
            "rim_share": rim_share,
        },
    )


def _evidence(
    dot: float,
    line: float,
    sphericity: float,
    elongation: float,
    rim_share: float,
    settings: DetectorSettings,
) -> float:
    """The log-odds that a candidate is a solid nodule, from physical evidence.

    A solid nodule answers the dot filter strongly, is round (sphericity near 1,
    elongation near 1), answers the dot filter more than the line filter, and lies
    inside its search sphere; the prior is negative because most candidates in a
    lung are vessels.
    """
    return (
        1.5 * math.log(max(dot, 1e-3) / settings.min_dot)
        + 4.0 * (sphericity - 0.8)
        - 3.0 * max(0.0, elongation - 1.3)
        + 0.8 * math.log((dot + 1.0) / (line + 1.0))
        - 15.0 * rim_share
        - 0.5
    )


def _ball(
    shape: tuple[int, ...],
    centre: tuple[int, int, int],
    spacing: tuple[float, float, float],
    r: float,
) -> BoolArray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (
        ((zz - centre[0]) * spacing[0]) ** 2
        + ((yy - centre[1]) * spacing[1]) ** 2
        + ((xx - centre[2]) * spacing[2]) ** 2
    ) <= max(r, max(spacing) / 2) ** 2


def _dilate(mask: BoolArray, radius_mm: float, spacing: tuple[float, float, float]) -> BoolArray:
    """Dilation by a ball of `radius_mm`, exact on anisotropic voxels (distance map)."""
    if not mask.any():
        return mask
    grown: BoolArray = ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm
    return grown


def _open(mask: BoolArray, radius_mm: float, spacing: tuple[float, float, float]) -> BoolArray:
    """Opening by a ball: erode (voxels deeper than the radius), then dilate back.

    Through distance maps, which cost the same whatever the radius, instead of a
    structuring element whose cost grows with its volume.
    """
    # Padding keeps the box's edge from counting as background for the erosion.
    padded = np.pad(mask, 1, mode="edge")
    core = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    return _dilate(core > radius_mm, radius_mm, spacing)


def _erode_once(mask: BoolArray) -> BoolArray:
    eroded: BoolArray = ndimage.binary_erosion(mask)
    return eroded


def _elongation(mask: BoolArray, spacing: tuple[float, float, float]) -> float:
    """sqrt of the largest over the smallest principal variance of the voxels (mm)."""
    points = np.argwhere(mask).astype(np.float64) * np.asarray(spacing)
    if len(points) < 4:
        return 1.0
    cov = np.cov(points.T) + np.diag(np.asarray(spacing) ** 2 / 12)
    values = np.linalg.eigvalsh(cov)
    return float(math.sqrt(values[-1] / max(values[0], 1e-6)))


def _sphericity(mask: BoolArray, spacing: tuple[float, float, float], volume_mm3: float) -> float:
    """The share of the component inside the sphere of the same volume at its centroid."""
    points = np.argwhere(mask).astype(np.float64) * np.asarray(spacing)
    centre = points.mean(axis=0)
    radius = (3 * volume_mm3 / (4 * math.pi)) ** (1 / 3)
    within = np.linalg.norm(points - centre, axis=1) <= radius
    return float(within.mean())


def _to_volume_frame(candidate: Candidate, box: tuple[slice, ...]) -> Candidate:
    """Shift a candidate found in the region's box to whole-volume indices."""
    k0, j0, i0 = (s.start for s in box)
    mask_box, peak = candidate.mask_box, candidate.peak
    return replace(
        candidate,
        mask_box=(
            slice(mask_box[0].start + k0, mask_box[0].stop + k0),
            slice(mask_box[1].start + j0, mask_box[1].stop + j0),
            slice(mask_box[2].start + i0, mask_box[2].stop + i0),
        ),
        peak=(peak[0] + k0, peak[1] + j0, peak[2] + i0),
    )
