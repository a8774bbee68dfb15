"""Accuracy of the reference lung-nodule model on LIDC-IDRI-0001, against four radiologists.

Runs the model once on the case and compares what it found with the LIDC reading
sessions (annotations-069.xml) and with a reference SEG of the large nodule made by an
independent tool (dcmqi). It only measures: nothing here feeds back into the model.

    .venv/bin/python bench/accuracy.py [--data DIR] [--json OUT]

DIR defaults to $RADNODE_SHARED_DATA/data/lidc-idri-0001. Exit code 0 when every target
is met, 1 when one is not, 2 when the data cannot be found or read.

Targets: the large nodule (outlined by all four readers) is found; its long axis is
within 20 % of the readers' mean; Dice >= 0.6 against the reference SEG on the slices
the reference covers; at most 4 false positives on the scan.

Matching, as usual for LIDC: readers' marks are grouped into physical nodules when
their centroids are closer than the larger radius or 10 mm. A finding matches a
nodule of 3 mm or more when its centroid is within max(10 mm, the nodule's mean
radius) of the readers' mean centroid or its mask contains that centroid, and a
nodule under 3 mm (a point) when it is within 5 mm. A finding that matches nothing is
a false positive, even when it lands on a reader's non-nodule mark (listed apart). A
second finding on an already matched nodule is listed as a duplicate, not counted as
a false positive (as LUNA16 scores it).

Outlines are filled inclusive of their own pixels (LIDC's convention, which the
reference SEG follows too); long axes are measured the same way for readers and model
(longest distance between pixel centres on one slice, plus one pixel).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom

from node.domain.volume import Volume
from node.errors import RadnodeError
from node.inference.package import ModelRegistry
from node.inference.pipelines import (
    InferenceResult,
    RuntimeSettings,
    build_pipeline,
    requirements_of,
)
from node.inference.volume import load_series_folder

try:  # python -m bench.accuracy, or imported by a test
    from bench import lidc
except ImportError:  # python bench/accuracy.py: bench/ itself is on sys.path
    import lidc  # type: ignore[no-redef]

BoolArray = npt.NDArray[np.bool_]

REPO = Path(__file__).resolve().parents[1]
MODEL = "lung-nodules"
XML_NAME = "annotations-069.xml"
SEG_NAME = "reference-nodule1-reader1-seg.dcm"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

GROUP_DISTANCE_MM = 10.0  # readers' marks closer than this (or the larger radius) group
MATCH_DISTANCE_MM = 10.0  # a finding this close (or within the mean radius) matches
SMALL_MATCH_MM = 5.0  # a finding this close to a point mark lands on it
NON_NODULE_MM = 5.0
GEOMETRY_TOLERANCE_MM = 0.01

# Targets.
LONG_AXIS_TOLERANCE_PCT = 20.0
MIN_DICE = 0.6
MAX_FALSE_POSITIVES = 4


DataMissing = lidc.DataMissing


# -- results -------------------------------------------------------------------------


@dataclass
class ReaderMeasure:
    """One reader's mark of a nodule, placed and measured in the CT's geometry."""

    reader: str
    session: int
    nodule_id: str
    kind: str  # "outline" or "point"
    centroid_mm: list[float]
    slices: int
    z_range_mm: list[float]
    long_axis_mm: float
    long_axis_slice: int
    volume_mm3: float
    malignancy: int | None


@dataclass
class FindingReport:
    """A model finding as the model reported it, re-measured here from its mask."""

    tracking_id: str
    label_value: int
    centroid_mm: list[float]
    volume_mm3: float
    long_axis_mm: float
    short_axis_mm: float
    mean_hu: float
    score: float
    key_slice: int
    extent_slices: list[int]
    remeasured_volume_mm3: float
    remeasured_long_axis_mm: float
    remeasured_centroid_mm: list[float]
    remeasured_centroid_offset_mm: float
    matched_to: str = ""  # "nodule-N", "small-N", "duplicate of nodule-N" or ""
    non_nodule_marks: list[str] = field(default_factory=list)
    non_nodule_distance_mm: float | None = None


@dataclass
class NoduleReport:
    """One physical nodule of 3 mm or more: the readers' view and the model's."""

    name: str
    readers: int
    readers_outline: int
    readers_point: int
    centroid_mm: list[float]
    mean_long_axis_mm: float
    long_axis_range_mm: list[float]
    mean_radius_mm: float
    mean_volume_mm3: float
    match_radius_mm: float
    found: bool = False
    finding: str = ""
    distance_mm: float | None = None
    centroid_in_mask: bool = False
    duplicates: list[str] = field(default_factory=list)
    model_long_axis_mm: float | None = None
    long_axis_difference_pct: float | None = None
    model_volume_mm3: float | None = None
    volume_difference_pct: float | None = None
    dice: dict[str, Any] = field(default_factory=dict)
    reader_marks: list[ReaderMeasure] = field(default_factory=list)


@dataclass
class SmallNoduleReport:
    """A nodule under 3 mm (point marks only): not a target, reported for context."""

    name: str
    readers: int
    centroid_mm: list[float]
    nearest_finding: str
    nearest_distance_mm: float | None
    found_within_5mm: bool
    reader_marks: list[ReaderMeasure] = field(default_factory=list)


@dataclass
class Target:
    """One pass/fail criterion with the value measured."""

    name: str
    value: float | bool | None
    threshold: str
    met: bool


# -- helpers ---------------------------------------------------------------------------


def _r(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


def _point(values: npt.ArrayLike) -> list[float]:
    return [_r(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _slice_index(volume: Volume) -> dict[str, int]:
    return {uid: k for k, uid in enumerate(volume.sop_instance_uids)}


def _to_index(volume: Volume, point_mm: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Continuous (k, j, i) of a patient point; the inverse of Volume.to_patient."""
    affine = volume.affine
    offset = np.asarray(point_mm, dtype=np.float64) - affine[:3, 3]
    result: npt.NDArray[np.float64] = np.linalg.solve(affine[:3, :3], offset)
    return result


def _mask_centroid_mm(volume: Volume, mask: BoolArray) -> npt.NDArray[np.float64]:
    kk, jj, ii = np.nonzero(mask)
    return volume.to_patient([kk.mean(), jj.mean(), ii.mean()])


def _restrict(mask: BoolArray, slices: BoolArray) -> BoolArray:
    out = mask.copy()
    out[~slices] = False
    return out


def _dice_pair(model: BoolArray, reference: BoolArray) -> dict[str, float]:
    """Dice on the reference's slices and over the whole volume."""
    covered = reference.any(axis=(1, 2))
    return {
        "same_slices": _r(lidc.dice(_restrict(model, covered), reference), 4),
        "volume": _r(lidc.dice(model, reference), 4),
    }


# -- loading ---------------------------------------------------------------------------


def data_folder(argument: str | None) -> Path:
    """The case folder from --data or $RADNODE_SHARED_DATA; DataMissing says what is wrong."""
    return lidc.case_folder(argument, ("ct", XML_NAME, SEG_NAME))


def run_model(ct: Path) -> tuple[Volume, InferenceResult, float, float]:
    """Load the series as the node does and run the reference model once on it."""
    package = ModelRegistry.load(REPO / "models").get(MODEL)
    started = time.perf_counter()
    volume = load_series_folder(ct, requirements_of(package))
    load_seconds = time.perf_counter() - started
    pipeline = build_pipeline(package, RuntimeSettings(intra_op_threads=2))
    started = time.perf_counter()
    result = pipeline.run(volume)
    return volume, result, load_seconds, time.perf_counter() - started


# -- geometry checks ---------------------------------------------------------------------


def check_ct_geometry(volume: Volume, ct: Path) -> dict[str, Any]:
    """Each slice's own header against the Volume: corner pixels placed by the DICOM
    formula (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) and by
    Volume.to_patient must agree."""
    slice_of = _slice_index(volume)
    worst = 0.0
    checked = 0
    rows, columns = volume.shape[1:]
    for path in sorted(ct.iterdir()):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        k = slice_of[str(header.SOPInstanceUID)]
        position = np.array([float(v) for v in header.ImagePositionPatient])
        cosines = np.array([float(v) for v in header.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
        for j, i in ((0, 0), (rows - 1, 0), (0, columns - 1), (rows - 1, columns - 1)):
            # DICOM C.7.6.2.1.1: column index i runs along the row direction cosines,
            # spaced by PixelSpacing[1]; row index j along the column cosines by [0].
            expected = position + cosines[:3] * column_spacing * i + cosines[3:] * row_spacing * j
            worst = max(worst, float(np.abs(volume.to_patient([k, j, i]) - expected).max()))
        checked += 1
    return {
        "slices_checked": checked,
        "max_corner_offset_mm": _r(worst, 4),
        "ok": worst <= GEOMETRY_TOLERANCE_MM and checked == volume.shape[0],
    }


def check_xml_geometry(volume: Volume, sessions: list[lidc.ReadingSession]) -> dict[str, Any]:
    """The XML's imageZposition against the z of the slice its SOP UID names."""
    slice_of = _slice_index(volume)
    worst = 0.0
    unknown = 0
    count = 0
    pairs: list[tuple[str, float]] = [
        (roi.sop_uid, roi.z_mm) for s in sessions for n in s.nodules for roi in n.rois
    ]
    pairs += [(m.sop_uid, m.z_mm) for s in sessions for m in s.non_nodules]
    for uid, z in pairs:
        if uid not in slice_of:
            unknown += 1
            continue
        count += 1
        worst = max(worst, abs(float(volume.to_patient([slice_of[uid], 0, 0])[2]) - z))
    return {
        "marks_checked": count,
        "unknown_sop_uids": unknown,
        "max_z_offset_mm": _r(worst, 4),
        "ok": unknown == 0 and worst <= GEOMETRY_TOLERANCE_MM,
    }


def read_reference_seg(volume: Volume, path: Path) -> tuple[BoolArray, dict[str, Any]]:
    """The reference SEG as a mask on the Volume's grid, with its geometry checked.

    Frames are placed by the SOP Instance UID each frame was derived from, and the
    placement is cross-checked with each frame's ImagePositionPatient.
    """
    ds = pydicom.dcmread(path)
    if str(ds.SOPClassUID) != SEGMENTATION_STORAGE:
        raise DataMissing(f"{path} is not a Segmentation (SOPClassUID {ds.SOPClassUID})")
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    spacing = [float(v) for v in measures.PixelSpacing]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    ct_orientation = [*volume.row_direction, *volume.column_direction]
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    if str(ds.SegmentationType) == "FRACTIONAL":
        frames = frames > float(ds.MaximumFractionalValue) / 2
    frames = frames.astype(bool)
    slice_of = _slice_index(volume)
    mask = np.zeros(volume.shape, dtype=bool)
    unplaced = 0
    disagree = 0
    worst_position = 0.0
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        by_position = round(float(_to_index(volume, position)[0]))
        if uid not in slice_of:
            unplaced += 1
            continue
        k = slice_of[uid]
        disagree += int(by_position != k)
        worst_position = max(
            worst_position, float(np.abs(volume.to_patient([k, 0, 0]) - position).max())
        )
        mask[k] |= frames[index]
    geometry = {
        "rows_columns": [int(ds.Rows), int(ds.Columns)],
        "pixel_spacing_mm": spacing,
        "image_orientation": orientation,
        "frame_of_reference_matches": str(ds.FrameOfReferenceUID) == volume.frame_of_reference_uid,
        "pixel_spacing_matches": bool(np.allclose(spacing, volume.spacing[1:], atol=1e-4)),
        "orientation_matches": bool(np.allclose(orientation, ct_orientation, atol=1e-4)),
        "matrix_matches": (int(ds.Rows), int(ds.Columns)) == volume.shape[1:],
        "frames": len(ds.PerFrameFunctionalGroupsSequence),
        "frames_not_in_ct": unplaced,
        "frames_where_uid_and_position_disagree": disagree,
        "max_frame_position_offset_mm": _r(worst_position, 4),
        "segments": [str(s.SegmentLabel) for s in ds.SegmentSequence],
        "voxels": int(mask.sum()),
        "slices": [int(k) for k in np.flatnonzero(mask.any(axis=(1, 2)))],
    }
    geometry["ok"] = bool(
        geometry["frame_of_reference_matches"]
        and geometry["pixel_spacing_matches"]
        and geometry["orientation_matches"]
        and geometry["matrix_matches"]
        and unplaced == 0
        and disagree == 0
        and worst_position <= GEOMETRY_TOLERANCE_MM
    )
    return mask, geometry


# -- readers -----------------------------------------------------------------------------


def measure_reader(
    volume: Volume, nodule: lidc.ReaderNodule
) -> tuple[ReaderMeasure, BoolArray | None]:
    """A reader's mark placed in the CT: outline marks become a filled mask."""
    slice_of = _slice_index(volume)
    malignancy = nodule.characteristics.get("malignancy")
    if nodule.is_point:
        roi = nodule.rois[0]
        x, y = roi.points[0]
        centre = volume.to_patient([slice_of[roi.sop_uid], y, x])
        measure = ReaderMeasure(
            reader=nodule.reader,
            session=nodule.session,
            nodule_id=nodule.nodule_id,
            kind="point",
            centroid_mm=_point(centre),
            slices=1,
            z_range_mm=[_r(centre[2]), _r(centre[2])],
            long_axis_mm=0.0,
            long_axis_slice=slice_of[roi.sop_uid],
            volume_mm3=0.0,
            malignancy=malignancy,
        )
        return measure, None
    mask = lidc.reader_mask(nodule, slice_of, volume.shape)
    covered = np.flatnonzero(mask.any(axis=(1, 2)))
    z = [float(volume.to_patient([k, 0, 0])[2]) for k in (covered[0], covered[-1])]
    long_axis, key = lidc.volume_long_axis_mm(mask, volume.spacing[1], volume.spacing[2])
    measure = ReaderMeasure(
        reader=nodule.reader,
        session=nodule.session,
        nodule_id=nodule.nodule_id,
        kind="outline",
        centroid_mm=_point(_mask_centroid_mm(volume, mask)),
        slices=int(covered.size),
        z_range_mm=[_r(min(z)), _r(max(z))],
        long_axis_mm=_r(long_axis),
        long_axis_slice=key,
        volume_mm3=_r(float(mask.sum()) * volume.voxel_volume_mm3, 1),
        malignancy=malignancy,
    )
    return measure, mask


def measure_findings(volume: Volume, result: InferenceResult) -> list[FindingReport]:
    """Each finding with its mask re-measured here, to check the model's own numbers."""
    reports: list[FindingReport] = []
    for number, finding in enumerate(result.findings, start=1):
        mask = result.findings_labels == number
        long_axis, _ = lidc.volume_long_axis_mm(mask, volume.spacing[1], volume.spacing[2])
        centroid = _mask_centroid_mm(volume, mask) if mask.any() else np.full(3, np.nan)
        reports.append(
            FindingReport(
                tracking_id=finding.tracking_id,
                label_value=number,
                centroid_mm=_point(finding.centroid_mm),
                volume_mm3=_r(finding.volume_mm3, 1),
                long_axis_mm=_r(finding.long_axis_mm),
                short_axis_mm=_r(finding.short_axis_mm),
                mean_hu=_r(finding.mean_hu, 1),
                score=_r(finding.score, 4),
                key_slice=finding.key_slice,
                extent_slices=list(finding.extent_slices),
                remeasured_volume_mm3=_r(float(mask.sum()) * volume.voxel_volume_mm3, 1),
                remeasured_long_axis_mm=_r(long_axis),
                remeasured_centroid_mm=_point(centroid),
                remeasured_centroid_offset_mm=_r(
                    float(np.linalg.norm(centroid - np.asarray(finding.centroid_mm))), 4
                ),
            )
        )
    return reports


# -- the comparison ----------------------------------------------------------------------


@dataclass
class Evaluation:
    """Everything measured, ready to print and to write as JSON."""

    nodules: list[NoduleReport]
    small_nodules: list[SmallNoduleReport]
    findings: list[FindingReport]
    non_nodules: list[dict[str, Any]]
    false_positives: list[str]
    on_non_nodules: list[str]
    reference_nodule: str


@dataclass
class _Marks:
    """Every reader's mark, measured, with its mask (None for a point)."""

    measures: list[ReaderMeasure]
    masks: list[BoolArray | None]

    def key(self, index: int) -> str:
        m = self.measures[index]
        return f"{m.session}:{m.reader}"


def evaluate(
    volume: Volume,
    result: InferenceResult,
    sessions: list[lidc.ReadingSession],
    reference: BoolArray,
) -> Evaluation:
    """Group the readers' marks, match the findings to them and measure the overlap."""
    marks = _Marks([], [])
    for session in sessions:
        for nodule in session.nodules:
            measure, mask = measure_reader(volume, nodule)
            marks.measures.append(measure)
            marks.masks.append(mask)
    groups = lidc.group_marks(
        [
            lidc.Mark(
                m.session,
                (m.centroid_mm[0], m.centroid_mm[1], m.centroid_mm[2]),
                m.long_axis_mm / 2,
            )
            for m in marks.measures
        ],
        GROUP_DISTANCE_MM,
    )
    groups.sort(key=lambda g: (-len(g), marks.measures[g[0]].centroid_mm[2]))
    findings = measure_findings(volume, result)
    nodules: list[NoduleReport] = []
    outlines_of: dict[str, list[int]] = {}
    small: list[SmallNoduleReport] = []
    for group in groups:
        outlines = [i for i in group if marks.masks[i] is not None]
        if outlines:
            report = _nodule(volume, result, findings, marks, group, f"nodule-{len(nodules) + 1}")
            nodules.append(report)
            outlines_of[report.name] = outlines
        else:
            small.append(_small_nodule(findings, marks, group, f"small-{len(small) + 1}"))

    reference_nodule = _reference_nodule(reference, marks, outlines_of)
    for report in nodules:
        if report.name == reference_nodule:
            report.dice["reference_vs_reader_masks"] = {
                marks.key(i): _r(lidc.dice(_mask(marks, i), reference), 4)
                for i in outlines_of[report.name]
            }
            if report.found:
                number = _finding(findings, report.finding).label_value
                report.dice["reference_seg"] = _dice_pair(
                    result.findings_labels == number, reference
                )

    # Label each finding with what it landed on; what is left is a false positive.
    for report in nodules:
        if report.found:
            _finding(findings, report.finding).matched_to = report.name
        for duplicate in report.duplicates:
            _finding(findings, duplicate).matched_to = f"duplicate of {report.name}"
    for sn in small:
        for f in findings:
            if not f.matched_to and _distance(f.centroid_mm, sn.centroid_mm) <= SMALL_MATCH_MM:
                f.matched_to = sn.name
    non_nodules = _non_nodules(volume, sessions)
    for f in findings:
        close = sorted(
            (d, m["name"])
            for m in non_nodules
            if (d := _distance(f.centroid_mm, m["centroid_mm"])) <= NON_NODULE_MM
        )
        f.non_nodule_marks = [name for _, name in close]
        f.non_nodule_distance_mm = _r(close[0][0]) if close else None
    false_positives = [f.tracking_id for f in findings if not f.matched_to]
    on_non_nodules = [f.tracking_id for f in findings if not f.matched_to and f.non_nodule_marks]
    return Evaluation(
        nodules, small, findings, non_nodules, false_positives, on_non_nodules, reference_nodule
    )


def _mask(marks: _Marks, index: int) -> BoolArray:
    mask = marks.masks[index]
    if mask is None:
        raise ValueError(f"mark {marks.key(index)} is a point and has no mask")
    return mask


def _distance(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b)))


def _nodule(
    volume: Volume,
    result: InferenceResult,
    findings: list[FindingReport],
    marks: _Marks,
    group: list[int],
    name: str,
) -> NoduleReport:
    """A nodule of 3 mm or more: the readers' centroid and size, the finding that
    matches it (its mask holds the centroid, else the nearest within the radius)."""
    outlines = [i for i in group if marks.masks[i] is not None]
    centre = np.mean([marks.measures[i].centroid_mm for i in outlines], axis=0)
    axes = [marks.measures[i].long_axis_mm for i in outlines]
    mean_axis = float(np.mean(axes))
    report = NoduleReport(
        name=name,
        readers=len(group),
        readers_outline=len(outlines),
        readers_point=len(group) - len(outlines),
        centroid_mm=_point(centre),
        mean_long_axis_mm=_r(mean_axis),
        long_axis_range_mm=[_r(min(axes)), _r(max(axes))],
        mean_radius_mm=_r(mean_axis / 2),
        mean_volume_mm3=_r(float(np.mean([marks.measures[i].volume_mm3 for i in outlines])), 1),
        match_radius_mm=_r(max(MATCH_DISTANCE_MM, mean_axis / 2)),
        reader_marks=[marks.measures[i] for i in group],
    )
    reader_masks = [_mask(marks, i) for i in outlines]
    report.dice = {"between_readers": _r(_mean_pairwise_dice(reader_masks), 4)}
    labels = result.findings_labels
    index = np.rint(_to_index(volume, centre)).astype(int)
    inside = bool(np.all(index >= 0) and np.all(index < np.array(volume.shape)))
    holder = int(labels[tuple(index)]) if inside else 0
    candidates = sorted(
        (f.label_value != holder, _distance(f.centroid_mm, centre), f.label_value)
        for f in findings
        if f.label_value == holder or _distance(f.centroid_mm, centre) <= report.match_radius_mm
    )
    if not candidates:
        return report
    _, distance, number = candidates[0]
    primary = findings[number - 1]
    report.found = True
    report.finding = primary.tracking_id
    report.distance_mm = _r(distance)
    report.centroid_in_mask = holder == number
    report.duplicates = [findings[other - 1].tracking_id for _, _, other in candidates[1:]]
    report.model_long_axis_mm = primary.long_axis_mm
    report.long_axis_difference_pct = _r(100 * (primary.long_axis_mm / mean_axis - 1), 2)
    report.model_volume_mm3 = primary.volume_mm3
    report.volume_difference_pct = _r(100 * (primary.volume_mm3 / report.mean_volume_mm3 - 1), 2)
    model_mask = labels == number
    report.dice["readers"] = {
        marks.key(i): _dice_pair(model_mask, m) for i, m in zip(outlines, reader_masks, strict=True)
    }
    report.dice["consensus_50pct"] = _dice_pair(model_mask, lidc.consensus_mask(reader_masks))
    return report


def _small_nodule(
    findings: list[FindingReport], marks: _Marks, group: list[int], name: str
) -> SmallNoduleReport:
    """A nodule under 3 mm: the readers' mean point and the nearest finding."""
    centre = np.mean([marks.measures[i].centroid_mm for i in group], axis=0)
    nearest = min(findings, key=lambda f: _distance(f.centroid_mm, centre), default=None)
    distance = None if nearest is None else _distance(nearest.centroid_mm, centre)
    return SmallNoduleReport(
        name=name,
        readers=len(group),
        centroid_mm=_point(centre),
        nearest_finding=nearest.tracking_id if nearest else "",
        nearest_distance_mm=None if distance is None else _r(distance),
        found_within_5mm=distance is not None and distance <= SMALL_MATCH_MM,
        reader_marks=[marks.measures[i] for i in group],
    )


def _reference_nodule(
    reference: BoolArray, marks: _Marks, outlines_of: dict[str, list[int]]
) -> str:
    """The nodule the reference SEG outlines: the one whose readers' masks it overlaps
    most; "" when it overlaps none."""
    overlaps = {
        name: sum(int((_mask(marks, i) & reference).sum()) for i in outlines)
        for name, outlines in outlines_of.items()
    }
    best = max(overlaps, key=lambda name: overlaps[name], default="")
    return best if best and overlaps[best] > 0 else ""


def _mean_pairwise_dice(masks: list[BoolArray]) -> float:
    pairs = [
        lidc.dice(masks[a], masks[b]) for a in range(len(masks)) for b in range(a + 1, len(masks))
    ]
    return float(np.mean(pairs)) if pairs else math.nan


def _finding(findings: list[FindingReport], tracking_id: str) -> FindingReport:
    return next(f for f in findings if f.tracking_id == tracking_id)


def _non_nodules(volume: Volume, sessions: list[lidc.ReadingSession]) -> list[dict[str, Any]]:
    slice_of = _slice_index(volume)
    marks: list[dict[str, Any]] = []
    for session in sessions:
        for mark in session.non_nodules:
            x, y = mark.point
            centre = volume.to_patient([slice_of[mark.sop_uid], y, x])
            marks.append(
                {
                    "name": f"{session.session}:{mark.non_nodule_id}",
                    "reader": mark.reader,
                    "centroid_mm": _point(centre),
                }
            )
    return marks


# -- targets, table ----------------------------------------------------------------------


def judge(evaluation: Evaluation, readers: int) -> list[Target]:
    """The pass/fail targets for the large nodule(s) outlined by every reader."""
    targets: list[Target] = []
    large = [n for n in evaluation.nodules if n.readers_outline == readers]
    if not large:
        targets.append(Target("a nodule outlined by all readers exists", False, "1", False))
    for n in large:
        targets.append(Target(f"{n.name} found", n.found, "found", n.found))
        diff = n.long_axis_difference_pct
        targets.append(
            Target(
                f"{n.name} long axis vs readers' mean (%)",
                diff,
                f"within +/-{LONG_AXIS_TOLERANCE_PCT:g} %",
                diff is not None and abs(diff) <= LONG_AXIS_TOLERANCE_PCT,
            )
        )
        if n.name == evaluation.reference_nodule:
            value = n.dice.get("reference_seg", {}).get("same_slices")
            targets.append(
                Target(
                    f"{n.name} Dice vs reference SEG (same slices)",
                    value,
                    f">= {MIN_DICE:g}",
                    value is not None and value >= MIN_DICE,
                )
            )
    if not evaluation.reference_nodule or evaluation.reference_nodule not in {
        n.name for n in large
    }:
        targets.append(
            Target("reference SEG overlaps a nodule outlined by all readers", False, "yes", False)
        )
    count = len(evaluation.false_positives)
    targets.append(
        Target(
            "false positives per scan",
            count,
            f"<= {MAX_FALSE_POSITIVES}",
            count <= MAX_FALSE_POSITIVES,
        )
    )
    return targets


def _summary(evaluation: Evaluation, readers: int) -> dict[str, Any]:
    """The headline numbers for the nodule outlined by every reader (the first, if
    several), for CI to assert on without walking the report."""
    large = [n for n in evaluation.nodules if n.readers_outline == readers]
    n = large[0] if large else None
    reference = n.dice.get("reference_seg", {}) if n else {}
    return {
        "large_nodule": n.name if n else "",
        "large_nodule_found": bool(n and n.found),
        "distance_mm": n.distance_mm if n else None,
        "model_long_axis_mm": n.model_long_axis_mm if n else None,
        "readers_long_axis_mm": n.mean_long_axis_mm if n else None,
        "long_axis_difference_pct": n.long_axis_difference_pct if n else None,
        "dice_reference_same_slices": reference.get("same_slices"),
        "dice_reference_volume": reference.get("volume"),
        "dice_consensus_same_slices": n.dice.get("consensus_50pct", {}).get("same_slices")
        if n
        else None,
        "false_positives": len(evaluation.false_positives),
        "small_nodules_found": sum(s.found_within_5mm for s in evaluation.small_nodules),
        "small_nodules": len(evaluation.small_nodules),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(report: dict[str, Any], evaluation: Evaluation, targets: list[Target]) -> None:
    """The readable version of the JSON."""
    geometry = report["geometry"]
    seg = geometry["reference_seg"]
    print(
        f"LIDC-IDRI-0001: {report['volume']['shape']} voxels, spacing "
        f"{report['volume']['spacing_mm']} mm; model {report['model']} "
        f"{report['model_version']} on {report['provider']}"
    )
    print(
        f"Geometry: CT headers vs Volume {geometry['ct']['max_corner_offset_mm']} mm "
        f"({'ok' if geometry['ct']['ok'] else 'MISMATCH'}); XML z vs slices "
        f"{geometry['xml']['max_z_offset_mm']} mm ({'ok' if geometry['xml']['ok'] else 'MISMATCH'})"
    )
    print(
        f"Reference SEG: spacing {seg['pixel_spacing_mm']} orientation {seg['image_orientation']} "
        f"-> {'matches the CT' if seg['ok'] else 'DOES NOT MATCH the CT'}; "
        f"{seg['frames']} frames placed by source SOP UID, position agrees "
        f"(max {seg['max_frame_position_offset_mm']} mm); slices {seg['slices']}"
    )
    print()
    print("Nodules >= 3 mm (readers' outlines vs model)")
    print(
        f"{'nodule':<10}{'readers':>8}{'found':>7}{'finding':>11}{'dist mm':>9}"
        f"{'LA model':>10}{'LA readers':>12}{'range':>13}{'diff %':>8}"
        f"{'vol model':>11}{'vol readers':>13}"
    )
    for n in evaluation.nodules:
        print(
            f"{n.name:<10}{n.readers:>8}{'yes' if n.found else 'NO':>7}{n.finding or '-':>11}"
            f"{_fmt(n.distance_mm):>9}{_fmt(n.model_long_axis_mm):>10}"
            f"{n.mean_long_axis_mm:>12.1f}"
            f"{f'{n.long_axis_range_mm[0]:.1f}-{n.long_axis_range_mm[1]:.1f}':>13}"
            f"{_fmt(n.long_axis_difference_pct):>8}{_fmt(n.model_volume_mm3, 0):>11}"
            f"{n.mean_volume_mm3:>13.0f}"
        )
        for m in n.reader_marks:
            print(
                f"    reader {m.session} ({m.reader}, {m.nodule_id}): {m.kind}, {m.slices} slices "
                f"z {m.z_range_mm[0]}..{m.z_range_mm[1]}, long axis {m.long_axis_mm:.1f} mm, "
                f"volume {m.volume_mm3:.0f} mm3, centroid {m.centroid_mm}"
            )
        ref = n.dice.get("reference_seg")
        if ref:
            print(
                f"    Dice vs reference SEG: same slices {ref['same_slices']:.3f}, "
                f"whole volume {ref['volume']:.3f}"
            )
        for key, value in n.dice.get("readers", {}).items():
            print(
                f"    Dice vs reader {key}: same slices {value['same_slices']:.3f}, "
                f"whole volume {value['volume']:.3f}"
            )
        cons = n.dice.get("consensus_50pct")
        if cons:
            print(
                f"    Dice vs 50% consensus: same slices {cons['same_slices']:.3f}, "
                f"whole volume {cons['volume']:.3f}"
            )
        print(f"    Readers among themselves: mean pairwise Dice {n.dice['between_readers']:.3f}")
        check = n.dice.get("reference_vs_reader_masks")
        if check:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in check.items())
            print(f"    Reference SEG vs readers' masks rasterised here: {shown}")
    print()
    print("Nodules < 3 mm (points; not targets)")
    for s in evaluation.small_nodules:
        print(
            f"  {s.name}: {s.readers} readers, centroid {s.centroid_mm}; nearest finding "
            f"{s.nearest_finding or '-'} at {_fmt(s.nearest_distance_mm)} mm -> "
            f"{'found' if s.found_within_5mm else 'not found'} within 5 mm"
        )
    print()
    print("Findings")
    for f in evaluation.findings:
        print(
            f"  {f.tracking_id}: centroid {f.centroid_mm}, score {f.score:.3f}, long axis "
            f"{f.long_axis_mm:.1f} (re-measured {f.remeasured_long_axis_mm:.1f}) mm, short "
            f"{f.short_axis_mm:.1f} mm, volume {f.volume_mm3:.0f} mm3, mean HU {f.mean_hu:.0f}, "
            f"slices {f.extent_slices[0]}..{f.extent_slices[1]} -> "
            f"{f.matched_to or 'FALSE POSITIVE'}"
            + (f" (on non-nodule {', '.join(f.non_nodule_marks)})" if f.non_nodule_marks else "")
        )
    print(
        f"False positives: {len(evaluation.false_positives)}"
        f" ({len(evaluation.on_non_nodules)} on a reader's non-nodule mark within 5 mm)"
    )
    print()
    timings = ", ".join(f"{k} {v:.2f}" for k, v in report["timings_s"].items())
    print(
        f"Timings (s): load {report['load_seconds']:.2f}, run {report['run_seconds']:.2f} "
        f"({timings})"
    )
    print(
        f"Lung volume: {report['notes'].get('lung_volume_ml', float('nan')):.0f} ml; "
        f"notes {report['notes']}"
    )
    print()
    print("Targets")
    for t in targets:
        print(f"  [{'met' if t.met else 'NOT MET'}] {t.name}: {t.value} (target {t.threshold})")
    verdict = "all targets met" if all(t.met for t in targets) else "targets NOT met"
    print(f"Verdict: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the lidc-idri-0001 folder (ct/, XML, reference SEG)")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    args = parser.parse_args(argv)
    try:
        folder = data_folder(args.data)
        sessions = lidc.parse_reading_sessions(folder / XML_NAME)
        volume, result, load_seconds, run_seconds = run_model(folder / "ct")
        geometry = {
            "ct": check_ct_geometry(volume, folder / "ct"),
            "xml": check_xml_geometry(volume, sessions),
        }
        reference, geometry["reference_seg"] = read_reference_seg(volume, folder / SEG_NAME)
    except (DataMissing, RadnodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    evaluation = evaluate(volume, result, sessions, reference)
    targets = judge(evaluation, readers=len(sessions))
    report: dict[str, Any] = {
        "data": str(folder),
        "model": result.model,
        "model_version": result.model_version,
        "provider": result.provider,
        "volume": {"shape": list(volume.shape), "spacing_mm": [_r(s, 6) for s in volume.spacing]},
        "load_seconds": _r(load_seconds),
        "run_seconds": _r(run_seconds),
        "timings_s": {k: _r(v, 4) for k, v in result.timings.items()},
        "notes": {k: (_r(v) if isinstance(v, float) else v) for k, v in result.notes.items()},
        "geometry": geometry,
        "readers": [{"session": s.session, "reader": s.reader} for s in sessions],
        "nodules": [asdict(n) for n in evaluation.nodules],
        "small_nodules": [asdict(s) for s in evaluation.small_nodules],
        "findings": [asdict(f) for f in evaluation.findings],
        "non_nodule_marks": evaluation.non_nodules,
        "reference_seg_nodule": evaluation.reference_nodule,
        "false_positives": {
            "count": len(evaluation.false_positives),
            "findings": evaluation.false_positives,
            "on_non_nodule_marks": len(evaluation.on_non_nodules),
            "on_non_nodule_findings": evaluation.on_non_nodules,
        },
        "targets": [asdict(t) for t in targets],
        "passed": all(t.met for t in targets),
    }
    report["summary"] = _summary(evaluation, len(sessions))
    print_report(report, evaluation, targets)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
