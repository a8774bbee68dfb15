"""The DICOM Segmentation of a job's result: one BINARY segment per finding, then the
model's other segments (such as Lung), framed on the source slices.

Segment n is finding n and carries the tracking UID `inp.uid("finding", n)`, which the
SR uses to point at the same finding. The object is deterministic: a job encoded again
gives the same bytes (fixed UIDs, dates taken from the source study, no clock).
"""

from __future__ import annotations

import re

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless
from scipy import ndimage

from node import __version__
from node.domain import CodedConcept, ModelInfo, SegmentSpec
from node.results.context import (
    MANUFACTURER,
    UNVERIFIED,
    EncodingInput,
    add_contributing_equipment,
    content_date_time,
    series_description,
    series_number_for,
)

# Transfer syntaxes a BINARY SEG may use (PS3.3 C.8.20.2: native or JPEG 2000 lossless).
SUPPORTED_TRANSFER_SYNTAXES = frozenset({ExplicitVRLittleEndian, JPEG2000Lossless})
# Source headers must sit where the volume says, to within these (mm, direction cosine).
POSITION_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-4


def build_seg(inp: EncodingInput, *, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """The job's Segmentation, ready to write.

    Frames are the source slices in volume order (`inp.sources[k]` is slice k) with
    empty frames left out; each frame references its source instance.

    Raises
    ------
    ValueError
        The transfer syntax is not allowed for a BINARY SEG, the sources do not sit
        where the volume says ("checked against the source geometry"), a finding has
        no voxels, a segment to include has no mask or no description in the model,
        or there is nothing to encode.
    """
    syntax = UID(transfer_syntax)
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer syntax {syntax} is not allowed for a BINARY SEG; use "
            f"{ExplicitVRLittleEndian} or {JPEG2000Lossless}"
        )
    check_source_geometry(inp)
    descriptions, masks = _segments(inp)
    date, time = content_date_time(inp.sources[0])
    seg: Dataset = hd.seg.Segmentation(
        source_images=list(inp.sources),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=inp.uid("seg-series"),
        series_number=series_number_for("seg", inp.series_numbers_in_use),
        sop_instance_uid=inp.uid("seg-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=inp.model.name[:64],
        software_versions=inp.model.version,
        # A software device has no serial number; the model version's Device UID
        # identifies exactly which one made the object (and is at most 64 characters).
        device_serial_number=inp.model.device_uid,
        content_label=_content_label(inp.model),
        content_description=f"{UNVERIFIED} ({inp.model.name} {inp.model.version})"[:64],
        transfer_syntax_uid=syntax,
        omit_empty_frames=True,
        series_description=series_description("SEG", inp.model),
        content_date=date,
        content_time=time,
        series_date=date,
        series_time=time,
    )
    _make_deterministic(seg, inp)
    seg.SoftwareVersions = [inp.model.version, f"radnode {__version__}"]
    if "Laterality" in inp.sources[0]:
        # highdicom copies the Patient and Study modules; Laterality is a series attribute.
        seg.Laterality = inp.sources[0].Laterality
    add_contributing_equipment(seg, inp.model)
    return seg


def check_source_geometry(inp: EncodingInput) -> None:
    """Each source header must be slice k of the volume, so that frame k of the SEG lies
    on the image it references; ValueError names the first slice off."""
    volume = inp.volume
    slices, rows, columns = volume.shape
    if len(inp.sources) != slices:
        raise ValueError(
            f"{len(inp.sources)} source headers for a volume of {slices} slices "
            "(checked against the source geometry)"
        )
    if inp.findings_labels.shape != volume.shape:
        raise ValueError(
            f"finding labels of shape {inp.findings_labels.shape} for a volume of "
            f"shape {volume.shape}"
        )
    orientation = np.array([*volume.row_direction, *volume.column_direction])
    spacing = np.array(volume.spacing[1:])
    expected = volume.to_patient([(k, 0, 0) for k in range(slices)])
    normal = np.asarray(volume.slice_direction)
    for k, header in enumerate(inp.sources):
        if volume.sop_instance_uids and header.SOPInstanceUID != volume.sop_instance_uids[k]:
            raise ValueError(
                f"source slice {k} is not the volume's slice {k} (SOP Instance UID differs; "
                "checked against the source geometry)"
            )
        if (int(header.Rows), int(header.Columns)) != (rows, columns):
            raise ValueError(
                f"source slice {k} has {header.Rows} x {header.Columns} pixels, the volume "
                f"{rows} x {columns} (checked against the source geometry)"
            )
        offset = np.asarray(header.ImagePositionPatient, dtype=np.float64) - expected[k]
        # Along the normal a slice may sit off the volume's regular grid by as much as
        # the volume accepted (under half a step); each SEG frame takes its position
        # from its own source image, so that is harmless. Across the slice it is not.
        along = float(offset @ normal)
        across = offset - along * normal
        if abs(along) > 0.5 * volume.spacing[0] + POSITION_TOLERANCE_MM or (
            np.abs(across).max() > 0.5 * min(spacing) + POSITION_TOLERANCE_MM
        ):
            shift = ", ".join(f"{v:+.3f}" for v in offset)
            raise ValueError(
                f"source slice {k} is off its volume position by ({shift}) mm "
                "(checked against the source geometry)"
            )
        cosines = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
        if np.abs(cosines - orientation).max() > ORIENTATION_TOLERANCE:
            raise ValueError(
                f"source slice {k} has orientation {cosines.round(5).tolist()}, the volume "
                f"{orientation.round(5).tolist()} (checked against the source geometry)"
            )
        pixel_spacing = np.asarray(header.PixelSpacing, dtype=np.float64)
        if np.abs(pixel_spacing - spacing).max() > POSITION_TOLERANCE_MM:
            raise ValueError(
                f"source slice {k} has pixel spacing {pixel_spacing.tolist()} mm, the volume "
                f"{spacing.tolist()} mm (checked against the source geometry)"
            )


def _segments(
    inp: EncodingInput,
) -> tuple[list[hd.seg.SegmentDescription], npt.NDArray[np.uint8]]:
    """The segment descriptions and the (slices, rows, columns, segments) masks:
    findings first, in order, then the included segments."""
    extra = [_included_spec(inp, label) for label in inp.include_segments]
    count = len(inp.findings) + len(extra)
    if count == 0:
        raise ValueError("nothing to encode: no findings and no segments to include")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=inp.model.name,
        family=codes.DCM.ArtificialIntelligence,
        version=inp.model.version,
        source=inp.model.manufacturer,
    )
    # Segments outermost in memory (handed over as a transposed view): each frame
    # highdicom takes is contiguous, and its overlap check sums whole volumes instead
    # of strided voxels; on a LIDC-size result the build takes 0.25 s instead of 0.75 s.
    stack = np.zeros((count, *inp.volume.shape), dtype=np.uint8)
    # One pass over the label volume finds every finding's bounding box.
    boxes = ndimage.find_objects(inp.findings_labels)
    if len(boxes) > len(inp.findings):
        raise ValueError(
            f"finding labels go up to {len(boxes)} but there are {len(inp.findings)} findings"
        )
    descriptions: list[hd.seg.SegmentDescription] = []
    spec = inp.model.finding_segment
    for number, finding in enumerate(inp.findings, start=1):
        box = boxes[number - 1] if number <= len(boxes) else None
        if box is None:
            raise ValueError(f"finding {number} ({finding.tracking_id}) has no voxels")
        stack[(number - 1, *box)] = inp.findings_labels[box] == number
        descriptions.append(
            _description(
                number,
                f"{finding.label} {number}",
                spec,
                algorithm,
                tracking=(finding.tracking_id, inp.uid("finding", number)),
            )
        )
    for offset, (label, other) in enumerate(extra):
        number = len(inp.findings) + offset + 1
        stack[number - 1] = inp.segments[label]
        descriptions.append(_description(number, label, other, algorithm))
    return descriptions, stack.transpose(1, 2, 3, 0)


def _included_spec(inp: EncodingInput, label: str) -> tuple[str, SegmentSpec]:
    """The model's description of an included segment, whose mask must be present."""
    if label not in inp.segments:
        raise ValueError(f"segment {label!r} is to be included but the result has no mask")
    if inp.segments[label].shape != inp.volume.shape:
        raise ValueError(
            f"segment {label!r} has shape {inp.segments[label].shape}, the volume "
            f"{inp.volume.shape}"
        )
    for spec in inp.model.segments:
        if spec.label == label and not spec.finding:
            return label, spec
    raise ValueError(f"model {inp.model.name} does not describe a segment {label!r}")


def _description(
    number: int,
    label: str,
    spec: SegmentSpec,
    algorithm: hd.AlgorithmIdentificationSequence,
    tracking: tuple[str, str] | None = None,
) -> hd.seg.SegmentDescription:
    """One AUTOMATIC segment with the model's codes and display colour."""
    tracking_id, tracking_uid = tracking if tracking else (None, None)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label[:64],
        segmented_property_category=_code(spec.category),
        segmented_property_type=_code(spec.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_id=tracking_id,
        tracking_uid=tracking_uid,
        anatomic_regions=[_code(spec.anatomic_region)] if spec.anatomic_region else None,
        display_color=hd.color.CIELabColor.from_rgb(*spec.color_rgb),
    )


def _code(concept: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(concept.value, concept.scheme, concept.meaning)


def _content_label(model: ModelInfo) -> str:
    """ContentLabel is a CS of at most 16 characters: "AI_" and the model's name."""
    name = re.sub(r"[^A-Z0-9_ ]", "_", model.name.upper())
    return f"AI_{name}"[:16]


def _make_deterministic(seg: Dataset, inp: EncodingInput) -> None:
    """Replace what highdicom takes from the clock or a random UID with fixed values."""
    # Type 3 in SOP Common: left out rather than set to a time that is not true.
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):
        if keyword in seg:
            delattr(seg, keyword)
    # highdicom's own Contributing Equipment item carries now() (Type 3 there too).
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item and item.get("ManufacturerModelName") == "highdicom":
            del item.ContributionDateTime
    dimension_uid = inp.uid("seg-dimension-organization")
    for item in seg.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = dimension_uid
