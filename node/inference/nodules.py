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

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.inference.volume_types import Volume

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
BlobFilter = Callable[[dict[str, FloatArray]], tuple[FloatArray, FloatArray]]


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The detector's parameters, from the model package's `parameters`."""

    scales_mm: tuple[float, ...] = (1.5, 2.5, 4.0, 6.0, 9.0)
    min_diameter_mm: float = 3.0
    max_diameter_mm: float = 40.0
    closing_radius_mm: float = 15.0
    min_dot: float = 40.0  # scale-normalised HU: a solid nodule in lung gives hundreds
    max_elongation: float = 3.0
    max_candidates: int = 200
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

    The closing runs on an in-plane grid halved (a 15 mm disc does not need 0.7 mm
    pixels); what it adds is brought back to full resolution and joined to the mask.
    """
    labels, _ = ndimage.label(lungs)
    region = lungs.copy()
    step = 2
    dy, dx = spacing[1] * step, spacing[2] * step
    pad_j = math.ceil(radius_mm / dy) + 1
    pad_i = math.ceil(radius_mm / dx) + 1
    rows, cols = lungs.shape[1], lungs.shape[2]
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        j0, j1 = box[1].start - box[1].start % step, box[1].stop
        i0, i1 = box[2].start - box[2].start % step, box[2].stop
        for k in range(box[0].start, box[0].stop):
            part = labels[k, j0:j1:step, i0:i1:step] == label
            if not part.any():
                continue
            padded = np.pad(part, ((pad_j, pad_j), (pad_i, pad_i)))
            # Closing by a disc through distance transforms: dilate, then erode.
            outside = ndimage.distance_transform_edt(~padded, sampling=(dy, dx))
            inside = ndimage.distance_transform_edt(outside <= radius_mm, sampling=(dy, dx))
            closed = (inside > radius_mm)[pad_j:-pad_j, pad_i:-pad_i]
            full = closed.repeat(step, axis=0).repeat(step, axis=1)
            h = min(full.shape[0], rows - j0)
            w = min(full.shape[1], cols - i0)
            region[k, j0 : j0 + h, i0 : i0 + w] |= full[:h, :w]
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


def _responses_at(
    hu: FloatArray, spacing: tuple[float, float, float], sigma_mm: float, run: BlobFilter
) -> tuple[FloatArray, FloatArray]:
    """Blob responses at one scale, on an in-plane grid as coarse as the scale allows.

    A Gaussian of sigma s is well sampled on pixels up to s / 1.6, so coarse scales
    run on a grid reduced in-plane by 2, 4 or 8 (block means) and their responses are
    brought back by repetition: a quarter of the work or less per coarse scale.
    """
    pixel = max(spacing[1], spacing[2])
    stride = 1
    while sigma_mm >= 1.6 * (stride * 2) * pixel and stride < 8:
        stride *= 2
    if stride == 1:
        return blob_responses(hu, spacing, sigma_mm, run)
    z, y, x = hu.shape
    y2, x2 = y - y % stride, x - x % stride
    coarse = (
        hu[:, :y2, :x2].reshape(z, y2 // stride, stride, x2 // stride, stride).mean(axis=(2, 4))
    )
    grid = (spacing[0], spacing[1] * stride, spacing[2] * stride)
    dot, line = blob_responses(coarse.astype(np.float32), grid, sigma_mm, run)
    full_dot = np.zeros(hu.shape, dtype=np.float32)
    full_line = np.zeros(hu.shape, dtype=np.float32)
    full_dot[:, :y2, :x2] = dot.repeat(stride, axis=1).repeat(stride, axis=2)
    full_line[:, :y2, :x2] = line.repeat(stride, axis=1).repeat(stride, axis=2)
    return full_dot, full_line


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
    boxes = ndimage.find_objects(region.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return [], region
    box = boxes[0]
    hu = volume.hu[box]
    inside = region[box]
    best_dot = np.zeros(hu.shape, dtype=np.float32)
    best_line = np.zeros(hu.shape, dtype=np.float32)
    best_scale = np.zeros(hu.shape, dtype=np.float32)
    for sigma in settings.scales_mm:
        dot, line = _responses_at(hu, spacing, sigma, run)
        better = dot > best_dot
        best_dot = np.where(better, dot, best_dot)
        best_line = np.where(better, line, best_line)
        best_scale = np.where(better, np.float32(sigma), best_scale)
    peaks = _peaks(best_dot, inside, settings)
    kept: list[Candidate] = []
    taken = np.zeros(hu.shape, dtype=bool)
    for peak in peaks:
        if taken[peak]:
            continue
        candidate = _segment(
            volume, hu, inside, peak, float(best_scale[peak]), best_dot, best_line, settings
        )
        if candidate is None:
            continue
        taken[candidate.mask_box] |= candidate.mask
        if candidate.score >= settings.min_score:
            kept.append(_to_volume_frame(candidate, box))
    kept.sort(key=lambda c: -c.score)
    return kept[: settings.max_findings], region


def _peaks(
    dot: FloatArray, inside: BoolArray, settings: DetectorSettings
) -> list[tuple[int, int, int]]:
    """Local maxima of the dot response inside the region, strongest first."""
    local_max = ndimage.maximum_filter(dot, size=(3, 5, 5)) == dot
    chosen = local_max & inside & (dot >= settings.min_dot)
    kk, jj, ii = np.nonzero(chosen)
    order = np.argsort(-dot[kk, jj, ii])[: settings.max_candidates]
    return [(int(kk[n]), int(jj[n]), int(ii[n])) for n in order]


def _segment(
    volume: Volume,
    hu: FloatArray,
    inside: BoolArray,
    peak: tuple[int, int, int],
    scale_mm: float,
    dot: FloatArray,
    line: FloatArray,
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
    sphere = ((zz - k) * dz) ** 2 + ((yy - j) * dy) ** 2 + ((xx - i) * dx) ** 2 <= radius_mm**2
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
    # An opening by a small ball detaches vessels thinner than it.
    opening_mm = max(1.0, min(3.0, 0.5 * scale_mm))
    dense = ndimage.binary_opening(dense, structure=_ball_structure((dz, dy, dx), opening_mm))
    labels, count = ndimage.label(dense)
    seed = (k - box[0].start, j - box[1].start, i - box[2].start)
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
    voxels = int(mask.sum())
    volume_mm3 = voxels * dz * dy * dx
    diameter = (6 * volume_mm3 / math.pi) ** (1 / 3)
    if diameter < settings.min_diameter_mm or diameter > settings.max_diameter_mm:
        return None
    touches_sphere = bool((mask & ~_erode_once(sphere)).any())
    elongation = _elongation(mask, (dz, dy, dx))
    surface = voxels - int(ndimage.binary_erosion(mask).sum())
    sphericity = _sphericity(mask, (dz, dy, dx), volume_mm3)
    peak_dot = float(dot[peak])
    peak_line = float(line[peak])
    if elongation > settings.max_elongation:
        return None
    # Score: a logistic blend of evidence, each term about 0 for a typical vessel
    # crossing and positive for a solid nodule.
    evidence = (
        1.2 * math.log(max(peak_dot, 1e-3) / settings.min_dot)
        + 2.0 * (sphericity - 0.5)
        - 1.0 * max(0.0, elongation - 1.6)
        + 1.0 * math.log((peak_dot + 1.0) / (peak_line + 1.0))
        - (3.0 if touches_sphere else 0.0)
    )
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
        },
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


def _ball_structure(spacing: tuple[float, float, float], radius_mm: float) -> BoolArray:
    half = [max(0, int(radius_mm // s)) for s in spacing]
    shape = tuple(2 * h + 1 for h in half)
    return _ball(shape, (half[0], half[1], half[2]), spacing, radius_mm)


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
    offset = [s.start for s in box]
    mask_box = tuple(
        slice(s.start + o, s.stop + o) for s, o in zip(candidate.mask_box, offset, strict=True)
    )
    peak = tuple(p + o for p, o in zip(candidate.peak, offset, strict=True))
    return Candidate(
        mask_box=(mask_box[0], mask_box[1], mask_box[2]),
        mask=candidate.mask,
        peak=(peak[0], peak[1], peak[2]),
        scale_mm=candidate.scale_mm,
        dot=candidate.dot,
        line=candidate.line,
        elongation=candidate.elongation,
        sphericity=candidate.sphericity,
        diameter_mm=candidate.diameter_mm,
        score=candidate.score,
        features=candidate.features,
    )
