"""The job's findings as a TID 1500 Measurement Report (Comprehensive 3D SR).

Layout (a tree; `dsrdump` prints the same):

    CONTAINER Imaging Measurement Report (TID 1500)
      language, device observer (the model), procedure reported
      Image Library: the key slices (empty when nothing was found)
      Imaging Measurements (empty when nothing was found)
        per finding n, all with tracking identifier and tracking UID uid("finding", n):
          Measurement Group (TID 1411): SEG segment n; volume, mean HU, probability
          Measurement Group (TID 1410): long-axis line on the key slice; long axis
          Measurement Group (TID 1410): short-axis line on the key slice; short axis
      Qualitative Evaluations: nodule present or absent, and the decision support

Why two planar groups per finding. OHIF draws a finding only from a group with a
SCOORD, and it merges the groups that share a tracking UID into one finding. It draws
the first line and lists every measurement of the merged groups. So each axis sits in
its own group, next to its line, and no measurement is listed twice. This layout also
passes PixelMed's validator (pixelmed 20220618), which fails the simpler layout with
one planar group per finding. PixelMed chooses the ROI templates for the whole Imaging
Measurements container: it checks against TID 1410 when the container holds exactly
one Image Region SCOORD, and against TID 1411 when any group references a segment.
Each chosen template then checks every Measurement Group in the container. With a
single finding, the volumetric group is checked as a planar one and gets the errors
"Image Region" and "Referenced Segmentation Frame" missing. With two lines per
finding, the container never holds exactly one SCOORD. Every group is then checked as
TID 1411, which allows one Image Region. Each planar group also passes TID 1410 on
its own (tests/integration/test_sr.py checks this).

The SR is deterministic, so a job encoded again gives the same bytes. UIDs are fixed.
Content and series date and time are the source study's, not the clock's, as in the
SEG. highdicom's instance creation time and contribution time are removed (Type 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from node import __version__
from node.domain import CodedConcept, Finding, ModelInfo
from node.results.context import (
    MANUFACTURER,
    UNVERIFIED,
    EncodingInput,
    add_contributing_equipment,
    content_date_time,
    copy_patient_study,
    series_description,
    series_number_for,
)
from node.results.fleischner import Recommendation, fleischner_2017

# -- codes ---------------------------------------------------------------------------------

# Procedure reported: TID 1500 takes it from CID 100, whose only CT entry is LOINC
# 25045-6. LOINC 24627-2 "CT Chest" would extend the (extensible) CID and is more
# specific, but PixelMed 20220618 reports any code outside CID 100 as an error. DICOM
# also lists 24627-2 as a document title, "CT Chest Report" (CID 7000). The finding
# site (lung) says where the procedure looked.
PROCEDURE_REPORTED = codes.cid100.CTUnspecifiedBodyRegion
LANGUAGE = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
VOLUME = codes.SCT.Volume  # 118565006, CID 7469
LONG_AXIS = codes.SCT.LongAxis  # 103339001, CID 7469 / 7470
SHORT_AXIS = codes.SCT.ShortAxis  # 103340004, CID 7469 / 7470
# Mean HU: TID 1419 names the quantity (Attenuation Coefficient, CID 7469) and gives
# how it was derived from the ROI (Mean, CID 7464).
ATTENUATION = codes.DCM.AttenuationCoefficient  # 112031
MEAN = codes.SCT.Mean  # 373098007
PROBABILITY = codes.DCM.Probability  # 122157, the model's score for the finding
CUBIC_MM = codes.UCUM.CubicMillimeter  # mm3
MM = codes.UCUM.Millimeter  # mm
HU = codes.UCUM.HounsfieldUnit  # [hnsf'U]
NO_UNITS = codes.UCUM.NoUnits  # 1
# TID 1500 row 12: the report's own qualitative evaluations (CODE and TEXT items).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
PRESENT = codes.SCT.Present  # 52101004
ABSENT = codes.SCT.Absent  # 272519000
RECOMMENDATION = codes.DCM.Recommendation  # 121075
COMMENT = codes.DCM.Comment  # 121106
# highdicom 0.28 writes "Source Series for Segmentation"; PS3.16 (and PixelMed, which
# warns about the difference) spell it in sentence case.
SOURCE_SERIES_MEANING = "Source series for segmentation"

# Decimals the values are written with: those of findings.json (Finding.as_json), so
# the SR, the summary and the JSON show the same numbers. The numbers are rounded
# before they are written. The DS text and the FD value then hold the same number,
# and a reader gets back exactly what was written.
VOLUME_DECIMALS = 1
AXIS_DECIMALS = 2
HU_DECIMALS = 1
PROBABILITY_DECIMALS = 3


def build_sr(inp: EncodingInput, seg: Dataset | None) -> Dataset:
    """The job's Measurement Report, ready to write.

    `seg` is the job's SEG (segment n is finding n, with tracking UID
    `inp.uid("finding", n)`). Without it, each finding's volume, mean HU and
    probability go into a TID 1501 group instead of a TID 1411 group.

    Raises
    ------
    ValueError
        A finding's key slice is not the source slice it names, its axis end points
        are not on that slice, or `seg` is not this study's SEG for these findings.
    """
    if seg is not None:
        _check_seg(inp, seg)
    groups: list[hd.sr.ContentSequence] = []
    for number, finding in enumerate(inp.findings, start=1):
        groups.extend(_finding_groups(inp, number, finding, seg))
    content = _report(inp, groups)
    date, time = content_date_time(inp.sources[0])
    evidence = [*inp.sources, seg] if seg is not None else list(inp.sources)
    sr: Dataset = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content,
        series_instance_uid=inp.uid("sr-series"),
        series_number=series_number_for("sr", inp.series_numbers_in_use),
        sop_instance_uid=inp.uid("sr-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=inp.model.name[:64],
        series_description=series_description("SR", inp.model),
        # The model analysed the whole series; every finding it reported is here.
        is_complete=True,
        is_final=False,  # PreliminaryFlag PRELIMINARY: a radiologist has yet to review
        is_verified=False,  # VerificationFlag UNVERIFIED
        content_date=date,
        content_time=time,
        series_date=date,
        series_time=time,
    )
    _make_deterministic(sr)
    sr.SoftwareVersions = [inp.model.version, f"radnode {__version__}"]
    copy_patient_study(sr, inp.sources[0])
    add_contributing_equipment(sr, inp.model)
    return sr


# -- the report ----------------------------------------------------------------------------


def _report(inp: EncodingInput, groups: Sequence[hd.sr.ContentSequence]) -> Dataset:
    """The TID 1500 root container.

    Built from highdicom's parts rather than `MeasurementReport`, which needs at least
    one measurement group and has no place for the report's qualitative evaluations.
    """
    root = hd.sr.ContainerContentItem(
        name=codes.cid7021.ImagingMeasurementReport, template_id="1500"
    )
    items = hd.sr.ContentSequence()
    items.extend(hd.sr.LanguageOfContentItemAndDescendants(LANGUAGE))
    items.extend(_observation_context(inp.model))
    items.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=PROCEDURE_REPORTED,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    items.extend(_image_library(inp))
    # Present even when empty (its groups are UC in TID 1500): OHIF reads this
    # container from every TID 1500 SR it opens. highdicom 0.28's group getters raise
    # AttributeError on it when it is empty; readers check for children first.
    items.append(_container(codes.DCM.ImagingMeasurements, [i for g in groups for i in g]))
    items.append(_qualitative_evaluations(inp))
    root.ContentSequence = items
    return root


def _observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    """The model as the device observer (IHE AI Results): Device UID, name, maker."""
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=model.device_uid,
                name=f"{model.name} {model.version}",
                manufacturer_name=model.manufacturer,
                model_name=model.name,
            ),
        )
    )


def _image_library(inp: EncodingInput) -> hd.sr.ContentSequence:
    """TID 1600: the source images the content points at, each key slice once, in
    volume order.

    With no findings nothing is pointed at and the library is empty. It is still
    there because OHIF reads it from every TID 1500 SR it opens. The Current Requested
    Procedure Evidence Sequence lists every analysed slice either way. A library of all
    slices would cost 14 ms per slice in highdicom (7 s for 500) and make PixelMed 15
    times slower.
    """
    keys = sorted({f.key_slice for f in inp.findings})
    if not keys:
        return hd.sr.ContentSequence([_container(codes.DCM.ImageLibrary)])
    return hd.sr.ImageLibrary([inp.sources[k] for k in keys])


def _container(name: Code, items: Sequence[hd.sr.ContentItem] = ()) -> hd.sr.ContainerContentItem:
    """A CONTAINS container holding `items`. Without items it has no Content Sequence
    at all, because that attribute is Type 1C and must not be empty."""
    container = hd.sr.ContainerContentItem(
        name=name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    if items:
        container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _qualitative_evaluations(inp: EncodingInput) -> hd.sr.ContainerContentItem:
    """Whether the model found any, said in words too, and the decision support.

    "Absent" is the explicit no-findings result: the radiologist can see that the study
    was analysed. The recommendation is given only for findings and is labelled as
    reference only and unverified.
    """
    finding_type = _finding_type(inp.model)
    what = finding_type.meaning.lower()
    model = f"{inp.model.name} {inp.model.version}"
    if inp.findings:
        presence = PRESENT
        text = f"{len(inp.findings)} {what}(s) detected by AI ({model}): {UNVERIFIED}."
    else:
        presence = ABSENT
        text = f"No {what} detected by AI ({model}) in the analysed series: {UNVERIFIED}."
    items: list[hd.sr.ContentItem] = [
        _code_item(finding_type, presence),
        _text_item(COMMENT, text),
    ]
    if inp.decision_support == "fleischner-2017":
        recommendation = fleischner_2017(inp.findings)
        if recommendation is not None:
            items.extend(_recommendation_items(recommendation))
    return _container(QUALITATIVE_EVALUATIONS, items)


def _recommendation_items(rec: Recommendation) -> list[hd.sr.TextContentItem]:
    """The guideline's whole paragraph, then each risk column on its own.

    Every text names the guideline and says it is for reference only. A viewer that
    shows one item at a time shows nothing without that context.
    """
    label = f"{rec.guideline}, reference only ({UNVERIFIED})"
    return [
        _text_item(COMMENT, f"Decision support: {rec.text()}"),
        _text_item(RECOMMENDATION, f"{label}, low-risk patient: {rec.low_risk}"),
        _text_item(RECOMMENDATION, f"{label}, high-risk patient: {rec.high_risk}"),
    ]


# -- one finding ---------------------------------------------------------------------------


def _finding_groups(
    inp: EncodingInput, number: int, finding: Finding, seg: Dataset | None
) -> list[hd.sr.ContentSequence]:
    """The finding's three measurement groups, sharing its tracking identifiers."""
    tracking = hd.sr.TrackingIdentifier(
        uid=inp.uid("finding", number), identifier=finding.tracking_id
    )
    finding_type = _finding_type(inp.model)
    sites = _finding_sites(inp.model)
    whole_finding = [
        hd.sr.Measurement(
            name=VOLUME,
            value=round(finding.volume_mm3, VOLUME_DECIMALS),
            unit=CUBIC_MM,
        ),
        hd.sr.Measurement(
            name=ATTENUATION,
            value=round(finding.mean_hu, HU_DECIMALS),
            unit=HU,
            derivation=MEAN,
        ),
        hd.sr.Measurement(
            name=PROBABILITY,
            value=round(finding.score, PROBABILITY_DECIMALS),
            unit=NO_UNITS,
        ),
    ]
    volumetric: hd.sr.ContentSequence
    if seg is not None:
        volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=_referenced_segment(inp, seg, number),
            finding_type=finding_type,
            finding_sites=sites,
            measurements=whole_finding,
        )
    else:
        volumetric = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=finding_type,
            finding_sites=sites,
            measurements=whole_finding,
        )
    planar = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=_axis_line(inp, finding, endpoints),
            finding_type=finding_type,
            finding_sites=sites,
            measurements=[
                hd.sr.Measurement(name=name, value=round(length, AXIS_DECIMALS), unit=MM)
            ],
        )
        for name, length, endpoints in (
            (LONG_AXIS, finding.long_axis_mm, finding.long_axis_endpoints_mm),
            (SHORT_AXIS, finding.short_axis_mm, finding.short_axis_endpoints_mm),
        )
    ]
    return [volumetric, *planar]


def _axis_line(
    inp: EncodingInput,
    finding: Finding,
    endpoints: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> hd.sr.ImageRegion:
    """An axis as a two-point POLYLINE in the key slice's image coordinates.

    Image coordinates are (column, row) with (0, 0) at the top left corner of the top
    left pixel, so a pixel's centre is at +0.5 (PS3.3 C.18.6.1.1).
    """
    if not 0 <= finding.key_slice < len(inp.sources):
        raise ValueError(
            f"finding {finding.tracking_id}: key slice {finding.key_slice} is outside the "
            f"{len(inp.sources)} source slices"
        )
    source = inp.sources[finding.key_slice]
    if source.SOPInstanceUID != finding.key_sop_instance_uid:
        raise ValueError(
            f"finding {finding.tracking_id}: key slice {finding.key_slice} is instance "
            f"{source.SOPInstanceUID}, not {finding.key_sop_instance_uid} as the finding says"
        )
    transform = hd.spatial.ReferenceToImageTransformer(
        image_position=[float(v) for v in source.ImagePositionPatient],
        image_orientation=[float(v) for v in source.ImageOrientationPatient],
        pixel_spacing=[float(v) for v in source.PixelSpacing],
        spacing_between_slices=inp.volume.spacing[0],
    )
    image = transform(np.asarray(endpoints, dtype=np.float64))
    # The third coordinate is the distance from the slice plane in slice steps.
    if np.abs(image[:, 2]).max() > 0.5:
        raise ValueError(
            f"finding {finding.tracking_id}: axis end points {endpoints} are not on its key "
            f"slice {finding.key_slice}"
        )
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=image[:, :2],
        source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
    )


def _referenced_segment(inp: EncodingInput, seg: Dataset, number: int) -> hd.sr.ReferencedSegment:
    """SEG segment `number` and the series it was segmented on.

    The constructor, because `ReferencedSegment.from_segmentation` fails on a
    single-segment SEG in highdicom 0.28.
    """
    source_series = hd.sr.SourceSeriesForSegmentation(inp.volume.series_uid)
    source_series.ConceptNameCodeSequence[0].CodeMeaning = SOURCE_SERIES_MEANING
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number,
        source_series=source_series,
    )


def _check_seg(inp: EncodingInput, seg: Dataset) -> None:
    """The SEG must be of this study and series, with segment n for finding n carrying
    the same tracking UID; otherwise the SR would point at the wrong voxels."""
    if seg.SOPClassUID != SegmentationStorage:
        raise ValueError(f"seg is a {seg.SOPClassUID}, not a Segmentation Storage instance")
    if seg.StudyInstanceUID != inp.sources[0].StudyInstanceUID:
        raise ValueError("seg belongs to another study than the sources")
    source_series = {item.SeriesInstanceUID for item in seg.get("ReferencedSeriesSequence", [])}
    if inp.volume.series_uid not in source_series:
        raise ValueError(f"seg does not reference the source series {inp.volume.series_uid}")
    segments = {int(s.SegmentNumber): s for s in seg.get("SegmentSequence", [])}
    for number in range(1, len(inp.findings) + 1):
        segment = segments.get(number)
        expected = inp.uid("finding", number)
        if segment is None or segment.get("TrackingUID") != expected:
            found = None if segment is None else segment.get("TrackingUID")
            raise ValueError(
                f"seg segment {number} should be finding {number} with tracking UID "
                f"{expected}, found {found}"
            )


# -- small parts ---------------------------------------------------------------------------


def _finding_type(model: ModelInfo) -> hd.sr.CodedConcept:
    """What each finding is (Nodule); the finding segment's type when not given."""
    concept = model.finding_type or model.finding_segment.type
    return _code(concept)


def _finding_sites(model: ModelInfo) -> list[hd.sr.FindingSite] | None:
    """Where the findings are (Lung), from the finding segment's anatomic region."""
    region = model.finding_segment.anatomic_region
    return [hd.sr.FindingSite(_code(region))] if region is not None else None


def _code(concept: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(concept.value, concept.scheme, concept.meaning)


def _code_item(name: Code | hd.sr.CodedConcept, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _text_item(name: Code, text: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _make_deterministic(sr: Dataset) -> None:
    """Remove what highdicom takes from the clock (all Type 3)."""
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):
        if keyword in sr:
            delattr(sr, keyword)
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item and item.get("ManufacturerModelName") == "highdicom":
            del item.ContributionDateTime
