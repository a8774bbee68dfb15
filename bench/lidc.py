"""LIDC-IDRI reading sessions: parse the XML, rasterise the readers' outlines, measure them.

Shared by bench/accuracy.py and its tests. Pure: no DICOM here; where a mark must be
placed in a series, the caller passes the slice index of each SOP Instance UID.

Conventions (LIDC): an `roi` is one reader's outline of a nodule on one slice, named by
`imageSOP_UID`; `edgeMap` points give xCoord = column and yCoord = row of the outline's
pixels, which belong to the nodule (inclusive). A nodule under 3 mm is one `roi` of one
point. `inclusion` FALSE marks a hole to cut out of the slice's region.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
Pixel = tuple[int, int]  # (column x, row y), as LIDC writes them


@dataclass(frozen=True, slots=True)
class Roi:
    """One reader's outline on one slice."""

    sop_uid: str
    z_mm: float
    inclusion: bool
    points: tuple[Pixel, ...]


@dataclass(frozen=True, slots=True)
class ReaderNodule:
    """One reader's mark of one nodule: outlines on its slices, or a single point."""

    reader: str
    session: int  # 1-based order of the reading session in the file
    nodule_id: str
    rois: tuple[Roi, ...]
    characteristics: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_point(self) -> bool:
        """Marked as a nodule under 3 mm: one slice, one point."""
        return all(len(roi.points) <= 1 for roi in self.rois)


@dataclass(frozen=True, slots=True)
class NonNodule:
    """A reader's mark of something they judged not to be a nodule (one point)."""

    reader: str
    session: int
    non_nodule_id: str
    sop_uid: str
    z_mm: float
    point: Pixel


@dataclass(frozen=True, slots=True)
class ReadingSession:
    """One radiologist's read of the scan."""

    reader: str
    session: int
    nodules: tuple[ReaderNodule, ...]
    non_nodules: tuple[NonNodule, ...]


# -- XML ---------------------------------------------------------------------------


def _local(tag: str) -> str:
    """A tag without its namespace: LIDC files use the default namespace http://www.nih.gov
    (most) or none (some), so elements are matched by local name."""
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str, default: str = "") -> str:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return default


def _pixel(element: ET.Element) -> Pixel:
    return int(float(_text(element, "xCoord"))), int(float(_text(element, "yCoord")))


def parse_reading_sessions(source: Path | str | bytes) -> list[ReadingSession]:
    """The reading sessions of an LIDC XML file (a path) or document (str or bytes)."""
    # LIDC's public files, not untrusted input: the standard parser is fine here.
    text = source.read_bytes() if isinstance(source, Path) else source
    root = ET.fromstring(text)  # noqa: S314
    sessions: list[ReadingSession] = []
    for number, element in enumerate(_children(root, "readingSession"), start=1):
        reader = _text(element, "servicingRadiologistID") or f"session-{number}"
        nodules = tuple(
            _reader_nodule(item, reader, number)
            for item in _children(element, "unblindedReadNodule")
        )
        non_nodules = tuple(
            NonNodule(
                reader=reader,
                session=number,
                non_nodule_id=_text(item, "nonNoduleID"),
                sop_uid=_text(item, "imageSOP_UID"),
                z_mm=float(_text(item, "imageZposition", "nan")),
                point=_pixel(_children(item, "locus")[0]),
            )
            for item in _children(element, "nonNodule")
        )
        sessions.append(ReadingSession(reader, number, nodules, non_nodules))
    return sessions


def _reader_nodule(element: ET.Element, reader: str, session: int) -> ReaderNodule:
    characteristics: dict[str, int] = {}
    for block in _children(element, "characteristics"):
        for child in block:
            value = (child.text or "").strip()
            if value.lstrip("-").isdigit():
                characteristics[_local(child.tag)] = int(value)
    rois = tuple(
        Roi(
            sop_uid=_text(roi, "imageSOP_UID"),
            z_mm=float(_text(roi, "imageZposition", "nan")),
            inclusion=_text(roi, "inclusion", "TRUE").upper() == "TRUE",
            points=tuple(_pixel(edge) for edge in _children(roi, "edgeMap")),
        )
        for roi in _children(element, "roi")
    )
    return ReaderNodule(reader, session, _text(element, "noduleID"), rois, characteristics)


# -- rasterising -------------------------------------------------------------------


def fill_outline(points: Sequence[Pixel], shape: tuple[int, int]) -> BoolArray:
    """Mask (rows, columns) of a closed outline: its own pixels plus every pixel whose
    centre lies inside the polygon through them (even-odd rule, scanline fill)."""
    mask = np.zeros(shape, dtype=bool)
    if not points:
        return mask
    xs = np.array([p[0] for p in points], dtype=np.float64)
    ys = np.array([p[1] for p in points], dtype=np.float64)
    x0, y0 = xs, ys
    x1, y1 = np.roll(xs, -1), np.roll(ys, -1)
    rows, columns = shape
    top = max(int(ys.min()), 0)
    bottom = min(int(ys.max()), rows - 1)
    for row in range(top, bottom + 1):
        # Half-open rule: an edge counts where row is in [low y, high y), so a vertex
        # shared by two edges is crossed once and horizontal edges never.
        crossing = ((y0 <= row) & (row < y1)) | ((y1 <= row) & (row < y0))
        if not crossing.any():
            continue
        t = (row - y0[crossing]) / (y1[crossing] - y0[crossing])
        xcross = np.sort(x0[crossing] + t * (x1[crossing] - x0[crossing]))
        for left, right in zip(xcross[0::2], xcross[1::2], strict=True):
            start = max(math.ceil(left), 0)
            stop = min(math.floor(right), columns - 1)
            if start <= stop:
                mask[row, start : stop + 1] = True
    _draw_outline(mask, xs, ys)
    return mask


def _draw_outline(mask: BoolArray, xs: FloatArray, ys: FloatArray) -> None:
    """Set the pixels on the segments between consecutive points, the closing one too
    (LIDC outlines are 8-connected, but a few skip a pixel or two)."""
    rows, columns = mask.shape
    for a in range(len(xs)):
        b = (a + 1) % len(xs)
        # One sample per pixel along the major axis, as a line is drawn (Bresenham);
        # finer samples would round a diagonal step's midpoint onto a corner pixel.
        count = int(max(abs(xs[b] - xs[a]), abs(ys[b] - ys[a]))) + 1
        cols = np.rint(np.linspace(xs[a], xs[b], count)).astype(np.int64)
        rws = np.rint(np.linspace(ys[a], ys[b], count)).astype(np.int64)
        keep = (cols >= 0) & (cols < columns) & (rws >= 0) & (rws < rows)
        mask[rws[keep], cols[keep]] = True


def reader_mask(
    nodule: ReaderNodule, slice_of: Mapping[str, int], shape: tuple[int, int, int]
) -> BoolArray:
    """The reader's region as a (slices, rows, columns) mask: on each slice the union of
    its inclusion outlines less its exclusion outlines. KeyError names an unknown slice."""
    mask = np.zeros(shape, dtype=bool)
    for roi in sorted(nodule.rois, key=lambda r: not r.inclusion):  # holes last
        k = slice_of[roi.sop_uid]
        region = fill_outline(roi.points, shape[1:])
        if roi.inclusion:
            mask[k] |= region
        else:
            mask[k] &= ~region
    return mask


# -- measuring ---------------------------------------------------------------------


def long_axis_mm(mask2d: BoolArray, row_mm: float, col_mm: float) -> float:
    """Longest in-plane diameter of a slice's region: the largest distance between the
    centres of two of its pixels, plus one pixel (a one-pixel region is one pixel wide,
    the convention node/inference/measure.py uses too). 0.0 for an empty slice."""
    if not mask2d.any():
        return 0.0
    # The farthest pair lies on the region's edge: keep pixels with a 4-neighbour outside.
    padded = np.pad(mask2d, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask2d
    ej, ei = np.nonzero(mask2d & ~inner)
    points = np.stack([ej * row_mm, ei * col_mm], axis=1).astype(np.float64)
    diff = points[:, None, :] - points[None, :, :]
    longest = float(np.sqrt((diff**2).sum(axis=2)).max())
    return longest + float(min(row_mm, col_mm))


def volume_long_axis_mm(mask: BoolArray, row_mm: float, col_mm: float) -> tuple[float, int]:
    """The longest `long_axis_mm` over the slices of a 3D mask, with the slice index."""
    best = (0.0, -1)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        length = long_axis_mm(mask[k], row_mm, col_mm)
        if length > best[0]:
            best = (length, int(k))
    return best


def dice(a: BoolArray, b: BoolArray) -> float:
    """Dice overlap 2|A and B| / (|A| + |B|); 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# -- grouping marks into physical nodules --------------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    """A reader's mark reduced to what grouping needs."""

    session: int
    centroid_mm: tuple[float, float, float]
    radius_mm: float  # 0 for a point


def group_marks(marks: Sequence[Mark], min_distance_mm: float = 10.0) -> list[list[int]]:
    """Indices of `marks` grouped into physical nodules.

    Two marks belong together when their centroids are closer than the larger of their
    radii or `min_distance_mm` (the usual LIDC practice); a group takes at most one mark
    per reading session. Larger marks are placed first, so that they anchor groups, and
    each mark joins the nearest group that accepts it.
    """
    order = sorted(range(len(marks)), key=lambda i: (-marks[i].radius_mm, i))
    groups: list[list[int]] = []
    for index in order:
        mark = marks[index]
        here = np.asarray(mark.centroid_mm)
        best: tuple[float, int] | None = None
        for number, members in enumerate(groups):
            if any(marks[m].session == mark.session for m in members):
                continue
            centre = np.mean([marks[m].centroid_mm for m in members], axis=0)
            radius = max(marks[m].radius_mm for m in members)
            distance = float(np.linalg.norm(here - centre))
            if distance <= max(min_distance_mm, radius, mark.radius_mm) and (
                best is None or distance < best[0]
            ):
                best = (distance, number)
        if best is None:
            groups.append([index])
        else:
            groups[best[1]].append(index)
    return [sorted(members) for members in groups]


def consensus_mask(masks: Iterable[BoolArray], level: float = 0.5) -> BoolArray:
    """Voxels marked by at least `level` of the masks (0.5: half the readers or more)."""
    stack = list(masks)
    if not stack:
        raise ValueError("consensus_mask needs at least one mask")
    votes = np.sum(stack, axis=0)
    result: BoolArray = votes >= level * len(stack)
    return result


class DataMissing(Exception):
    """The case's files are not where they should be; benchmarks exit with code 2."""


def case_folder(argument: str | Path | None, needed: Sequence[str] = ("ct",)) -> Path:
    """The LIDC-IDRI-0001 folder from --data or $RADNODE_SHARED_DATA, with `needed` in it.

    Raises DataMissing with what to set or what is missing.
    """
    if argument:
        folder = Path(argument)
    else:
        shared = os.environ.get("RADNODE_SHARED_DATA")
        if not shared:
            raise DataMissing(
                "RADNODE_SHARED_DATA is not set and --data was not given; point either at "
                "the shared data (the folder that holds data/lidc-idri-0001)"
            )
        folder = Path(shared) / "data" / "lidc-idri-0001"
    missing = [str(folder / name) for name in needed if not (folder / name).exists()]
    if missing:
        raise DataMissing(f"LIDC-IDRI-0001 data not found: missing {', '.join(missing)}")
    return folder
