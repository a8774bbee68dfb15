"""The job's Measurement Report (TID 1500 Comprehensive 3D SR). It is built from a
phantom result with two known nodules, with one nodule and with none, against the
job's real SEG. It is checked by dciodvfy, dcentvfy and PixelMed (which checks the SR
templates), then read back with highdicom and compared with the findings."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pydicom.config
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from node.results.context import (
    PATIENT_STUDY_KEYWORDS,
    UNVERIFIED,
    EncodingInput,
    series_description,
    series_number_for,
)
from node.results.fleischner import fleischner_2017
from node.results.seg import build_seg
from node.results.sr import (
    AXIS_DECIMALS,
    HU_DECIMALS,
    PROBABILITY_DECIMALS,
    PROCEDURE_REPORTED,
    QUALITATIVE_EVALUATIONS,
    VOLUME_DECIMALS,
    build_sr,
)
from tests.helpers import dicom3tools, pixelmed_sr_validator, run_tool
from tests.results_helpers import make_encoding_input, to_bytes, write
from tests.results_helpers import strict_pydicom as strict_pydicom_settings

# dciodvfy warnings we accept, each with its reason; any other warning fails the test.
# - Device UID in the Contributing Equipment item: IHE AI Results asks for it to name
#   the model version. The current standard has it (Type 3) in the SOP Common
#   Contributing Equipment Sequence; dicom3tools 1.00~20220618 predates that edition.
#   Item 3: after highdicom's acquisition and library items comes ours.
DCIODVFY_ALLOWED = {
    "Warning - </ContributingEquipmentSequence(0018,a001)[3]/DeviceUID(0018,1002)> - "
    "Attribute is not present in standard DICOM IOD",
}
# dcentvfy warning we accept (file names left out): dicom3tools files AccessionNumber
# under the Series entity for CT and SEG but under the Study entity for the SR. It
# warns when the values are the same and then compares nothing. The test below checks
# the patient and study attributes itself.
DCENTVFY_ALLOWED = {
    "Warning - Different information entities for attribute - Element=<AccessionNumber> "
    "IE <Series> versus <Study>",
}


@pytest.fixture(scope="module", autouse=True)
def strict_pydicom() -> Iterator[None]:
    """Invalid values raise while building and reading, as in highdicom's tests."""
    with strict_pydicom_settings():
        yield


@dataclasses.dataclass(frozen=True)
class Case:
    """One result, its SEG, its SR and where the SR was written."""

    inp: EncodingInput
    seg: Dataset | None
    sr: Dataset
    path: Path


def single_finding(inp: EncodingInput) -> EncodingInput:
    """The same result with only its first finding."""
    labels = np.where(inp.findings_labels == 1, 1, 0).astype(np.uint16)
    return dataclasses.replace(inp, findings=inp.findings[:1], findings_labels=labels)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sr")


@pytest.fixture(scope="module")
def cases(folder: Path) -> dict[str, Case]:
    """The phantom's result as SR with two nodules, one, and none."""
    two = make_encoding_input(folder / "ct")
    inputs = {
        "two": two,
        "one": single_finding(two),
        "none": make_encoding_input(folder / "ct-empty", with_findings=False),
    }
    result: dict[str, Case] = {}
    for name, inp in inputs.items():
        seg = build_seg(inp) if inp.findings else None
        sr = build_sr(inp, seg)
        result[name] = Case(inp, seg, sr, write(sr, folder / f"sr-{name}.dcm"))
    return result


@pytest.fixture(scope="module")
def pixelmed(cases: dict[str, Case], folder: Path) -> dict[str, str]:
    """PixelMed's report on each case, run two at a time (7 s each on this phantom).
    `-describe` makes it name the templates it applies."""
    paths = {name: case.path for name, case in cases.items()}
    paths["planar"] = write(planar_group_alone(cases["one"].sr), folder / "sr-planar.dcm")
    commands = {name: pixelmed_sr_validator(path, "-describe") for name, path in paths.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(commands, pool.map(run_tool, commands.values()), strict=True))
    return {name: run.stdout + run.stderr for name, run in done.items()}


def messages(output: str) -> tuple[set[str], set[str]]:
    """The Error and Warning lines of a validator's output (dicom3tools writes "Error -",
    PixelMed "Error:")."""
    lines = {line.strip() for line in output.splitlines()}
    return (
        {line for line in lines if line.startswith("Error")},
        {line for line in lines if line.startswith("Warning")},
    )


def planar_group_alone(sr: Dataset) -> Dataset:
    """A copy of the SR whose Imaging Measurements hold only the first planar group."""
    alone = copy.deepcopy(sr)
    container = next(item for item in alone.ContentSequence if concept(item) == ("126010", "DCM"))
    planar = [
        group
        for group in container.ContentSequence
        if any(item.ValueType == "SCOORD" for item in group.ContentSequence)
    ]
    container.ContentSequence = pydicom.Sequence(planar[:1])
    return alone


def concept(item: Dataset) -> tuple[str, str]:
    name = item.ConceptNameCodeSequence[0]
    return str(name.CodeValue), str(name.CodingSchemeDesignator)


def report(path: Path) -> hd.sr.MeasurementReport:
    """The SR as written, read back with highdicom."""
    content: hd.sr.MeasurementReport = hd.sr.srread(path).content
    return content


def root_item(path: Path, code: tuple[str, str]) -> Dataset:
    """The root content item with concept name `code`, as written."""
    read = pydicom.dcmread(path)
    return next(item for item in read.ContentSequence if concept(item) == code)


def texts(container: Dataset, code: tuple[str, str]) -> list[str]:
    return [
        str(item.TextValue)
        for item in container.get("ContentSequence", [])
        if item.ValueType == "TEXT" and concept(item) == code
    ]


# -- conformance ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["two", "one", "none"])
def test_dciodvfy_finds_no_error_and_only_the_known_warning(
    cases: dict[str, Case], name: str
) -> None:
    # Given the SR of two nodules, one nodule or none
    path = cases[name].path
    # When dciodvfy checks its modules and attributes
    run = run_tool([dicom3tools("dciodvfy"), "-new", str(path)])
    # Then it finds no error, and no warning beyond the one we accept
    errors, warnings = messages(run.stdout + run.stderr)
    assert not errors
    assert warnings == DCIODVFY_ALLOWED


@pytest.mark.parametrize("name", ["two", "one", "none"])
def test_pixelmed_finds_no_error_and_no_warning_in_the_templates(
    cases: dict[str, Case], pixelmed: dict[str, str], name: str
) -> None:
    # Given PixelMed's report on the SR of two nodules, one nodule (which broke the layout
    # with one planar group per finding) or none
    output = pixelmed[name]
    # Then it checked the SR against TID 1500 to the end
    assert "Found Root Template TID_1500 (MeasurementReport)" in output
    assert "Root Template Validation Complete" in output
    assert "IOD validation complete" in output
    # And every measurement group's measurements against TID 1419
    groups = 3 * len(cases[name].inp.findings)
    assert output.count("Checking Template: TID_1419 (ROIMeasurements)") == groups
    # And it found nothing wrong
    errors, warnings = messages(output)
    assert not errors
    assert not warnings


def test_a_planar_group_alone_passes_pixelmeds_planar_template(
    pixelmed: dict[str, str],
) -> None:
    # Given an SR reduced to one planar group. In the full report PixelMed checks every
    # group against TID 1411 only, because it does not pick TID 1410 for a container
    # with more than one Image Region. Alone, a planar group is checked as TID 1410.
    output = pixelmed["planar"]
    assert "Checking Template: TID_1410 (PlanarROIMeasurements)" in output
    # Then TID 1410 finds nothing wrong either
    errors, warnings = messages(output)
    assert not errors
    assert not warnings


def test_dcentvfy_finds_the_sr_consistent_with_its_sources_and_seg(
    cases: dict[str, Case], folder: Path
) -> None:
    # Given the phantom's source files, its SEG and its SR
    case = cases["two"]
    assert case.seg is not None
    seg = write(case.seg, folder / "seg-two.dcm")
    sources = sorted((folder / "ct").glob("*.dcm"))
    # When dcentvfy compares patient, study and frame of reference across all of them
    run = run_tool([dicom3tools("dcentvfy"), *map(str, sources), str(seg), str(case.path)])
    # Then they agree, but for the known classification warning (once per other file)
    errors, warnings = messages(run.stdout + run.stderr)
    assert not errors
    assert {re.sub(r" for file <.*", "", w) for w in warnings} == DCENTVFY_ALLOWED


# -- the header ----------------------------------------------------------------------------


def test_the_sr_is_a_new_unverified_series_of_the_same_patient_and_study(
    cases: dict[str, Case],
) -> None:
    # Given the SR of two nodules, read back
    case = cases["two"]
    inp, read = case.inp, pydicom.dcmread(case.path)
    source = inp.sources[0]
    # Then it is a Comprehensive 3D SR in its own deterministic series
    assert read.SOPClassUID == Comprehensive3DSRStorage
    assert read.SOPInstanceUID == inp.uid("sr-instance")
    assert read.SeriesInstanceUID == inp.uid("sr-series") != source.SeriesInstanceUID
    assert read.SeriesNumber == series_number_for("sr", inp.series_numbers_in_use)
    assert read.SeriesDescription == series_description("SR", inp.model)
    assert "UNVERIFIED" in read.SeriesDescription
    assert read.Modality == "SR"
    # And the same patient and study as its source
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            assert read[keyword].value == source[keyword].value, keyword
    # And it says it is unverified, preliminary and complete
    assert (read.VerificationFlag, read.PreliminaryFlag, read.CompletionFlag) == (
        "UNVERIFIED",
        "PRELIMINARY",
        "COMPLETE",
    )
    # And its dates are the study's, not the clock's
    assert (read.ContentDate, read.ContentTime) == (source.StudyDate, source.StudyTime)
    assert "InstanceCreationDate" not in read
    # And the model is the last contributing equipment, as IHE AI Results asks
    equipment = read.ContributingEquipmentSequence[-1]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    assert equipment.DeviceUID == inp.model.device_uid
    # And the evidence lists every analysed slice and the SEG
    assert case.seg is not None
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in read.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {*inp.volume.sop_instance_uids, case.seg.SOPInstanceUID}


def test_two_builds_are_byte_identical(cases: dict[str, Case]) -> None:
    # Given a result encoded once
    case = cases["two"]
    # When it is encoded again
    again = build_sr(case.inp, case.seg)
    # Then the bytes are the same (no clock, no random UID)
    assert to_bytes(again) == case.path.read_bytes()


# -- the content, read back with highdicom --------------------------------------------------


def test_the_device_observer_procedure_and_image_library(cases: dict[str, Case]) -> None:
    # Given the SR of two nodules, read back
    case = cases["two"]
    model = case.inp.model
    content = report(case.path)
    # Then the observer is the model, as a device
    (observer,) = content.get_observer_contexts(observer_type=codes.DCM.Device)
    device = observer.observer_identifying_attributes
    assert device.uid == model.device_uid
    assert device.name == f"{model.name} {model.version}"
    assert (device.manufacturer_name, device.model_name) == (model.manufacturer, model.name)
    # And the procedure reported is a CT
    procedure = root_item(case.path, ("121058", "DCM")).ConceptCodeSequence[0]
    assert (procedure.CodeValue, procedure.CodingSchemeDesignator) == (
        PROCEDURE_REPORTED.value,
        PROCEDURE_REPORTED.scheme_designator,
    )
    # And the Image Library lists each key slice once
    library = root_item(case.path, ("111028", "DCM"))
    listed = [
        image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in library.ContentSequence
        for image in group.ContentSequence
        if image.ValueType == "IMAGE"
    ]
    assert sorted(listed) == sorted({f.key_sop_instance_uid for f in case.inp.findings})


@pytest.mark.parametrize("name", ["two", "one"])
def test_each_finding_has_a_volumetric_group_on_its_seg_segment(
    cases: dict[str, Case], name: str
) -> None:
    # Given the SR of two nodules or of one, read back
    case = cases[name]
    inp, seg = case.inp, case.seg
    assert seg is not None
    content = report(case.path)
    groups = content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(inp.findings)
    for number, (finding, group) in enumerate(zip(inp.findings, groups, strict=True), start=1):
        # Then group n carries finding n's tracking identifiers, the SEG's rule
        assert group.tracking_uid == inp.uid("finding", number)
        assert group.tracking_identifier == finding.tracking_id
        # And points at segment n of the job's SEG, segmented on the source series
        assert group.reference_type == codes.DCM.ReferencedSegment
        segment = group.referenced_segment
        reference = segment[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == seg.SOPClassUID
        assert reference.ReferencedSegmentNumber == number
        series = [item for item in segment if item.ValueType == "UIDREF"]
        assert [item.value for item in series] == [inp.volume.series_uid]
        # And the SEG's segment n carries the same tracking UID
        assert seg.SegmentSequence[number - 1].TrackingUID == group.tracking_uid
        # And the finding is a nodule in the lung
        assert group.finding_type.value == "27925004"
        assert [site.value.value for site in group.finding_sites] == ["39607008"]


@pytest.mark.parametrize("name", ["two", "one"])
def test_measurements_round_trip_exactly(cases: dict[str, Case], name: str) -> None:
    # Given the SR of two nodules or of one, read back
    case = cases[name]
    content = report(case.path)
    for number, finding in enumerate(case.inp.findings, start=1):
        uid = case.inp.uid("finding", number)
        (whole,) = content.get_volumetric_roi_measurement_groups(tracking_uid=uid)
        planar = content.get_planar_roi_measurement_groups(tracking_uid=uid)
        found = {m.name.value: m for group in (whole, *planar) for m in group.get_measurements()}
        # Then each value is the finding's, rounded as findings.json rounds it, exactly
        expected = {
            "118565006": (round(finding.volume_mm3, VOLUME_DECIMALS), "mm3"),
            "112031": (round(finding.mean_hu, HU_DECIMALS), "[hnsf'U]"),
            "122157": (round(finding.score, PROBABILITY_DECIMALS), "1"),
            "103339001": (round(finding.long_axis_mm, AXIS_DECIMALS), "mm"),
            "103340004": (round(finding.short_axis_mm, AXIS_DECIMALS), "mm"),
        }
        assert set(found) == set(expected)
        for code, (value, unit) in expected.items():
            measurement = found[code]
            assert measurement.value == value, code
            assert measurement.unit.value == unit, code
            # And the decimal text says the same number as the binary value
            item = measurement[0].MeasuredValueSequence[0]
            assert float(item.NumericValue) == item.FloatingPointValue == value, code
        # And the mean HU says how it was derived
        assert found["112031"].derivation == codes.SCT.Mean


@pytest.mark.parametrize("name", ["two", "one"])
def test_axis_lines_lie_on_the_key_slice_where_the_finding_says(
    cases: dict[str, Case], name: str
) -> None:
    # Given the SR of two nodules or of one, read back
    case = cases[name]
    content = report(case.path)
    for number, finding in enumerate(case.inp.findings, start=1):
        groups = content.get_planar_roi_measurement_groups(
            tracking_uid=case.inp.uid("finding", number)
        )
        # Then there is a long-axis line and a short-axis line, each with its length
        assert [g.get_measurements()[0].name.value for g in groups] == [
            "103339001",
            "103340004",
        ]
        key = case.inp.sources[finding.key_slice]
        for group, endpoints in zip(
            groups,
            (finding.long_axis_endpoints_mm, finding.short_axis_endpoints_mm),
            strict=True,
        ):
            assert group.tracking_identifier == finding.tracking_id
            region = group.roi
            assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            # And each line is drawn on the key slice
            image = region.ContentSequence[0].ReferencedSOPSequence[0]
            assert image.ReferencedSOPInstanceUID == finding.key_sop_instance_uid
            # And its two points map back to the finding's end points within half a pixel
            # ((column, row) image coordinates: a pixel's centre is at +0.5)
            points = np.asarray(region.value, dtype=np.float64)
            assert points.shape == (2, 2)
            origin = np.asarray(key.ImagePositionPatient, dtype=np.float64)
            cosines = np.asarray(key.ImageOrientationPatient, dtype=np.float64)
            row_spacing, column_spacing = (float(v) for v in key.PixelSpacing)
            patient = (
                origin
                + np.outer(points[:, 0] - 0.5, cosines[:3] * column_spacing)
                + np.outer(points[:, 1] - 0.5, cosines[3:] * row_spacing)
            )
            error_mm = np.linalg.norm(patient - np.asarray(endpoints), axis=1)
            assert error_mm.max() <= 0.5 * min(row_spacing, column_spacing)


def test_recommendations_are_given_labelled_as_reference_only(cases: dict[str, Case]) -> None:
    # Given the SR of two nodules with Fleischner 2017 decision support (the default)
    case = cases["two"]
    assert case.inp.decision_support == "fleischner-2017"
    recommendation = fleischner_2017(case.inp.findings)
    assert recommendation is not None
    evaluations = root_item(case.path, (QUALITATIVE_EVALUATIONS.value, "UMLS"))
    # Then the guideline's paragraph is there
    (comment,) = [t for t in texts(evaluations, ("121106", "DCM")) if "Decision" in t]
    assert recommendation.text() in comment
    # And each risk column on its own, naming the guideline, as reference only
    low, high = texts(evaluations, ("121075", "DCM"))
    assert low.endswith(f"low-risk patient: {recommendation.low_risk}")
    assert high.endswith(f"high-risk patient: {recommendation.high_risk}")
    for text in (low, high):
        assert recommendation.guideline in text
        assert "reference only" in text
        assert UNVERIFIED in text


def test_no_recommendation_without_decision_support(cases: dict[str, Case], folder: Path) -> None:
    # Given the same result with decision support switched off
    case = cases["two"]
    inp = dataclasses.replace(case.inp, decision_support="none")
    # When it is encoded
    path = write(build_sr(inp, case.seg), folder / "sr-no-decision-support.dcm")
    # Then the report has no recommendation and names no guideline
    evaluations = root_item(path, (QUALITATIVE_EVALUATIONS.value, "UMLS"))
    assert texts(evaluations, ("121075", "DCM")) == []
    assert not any("Fleischner" in t for t in texts(evaluations, ("121106", "DCM")))
    # But the findings are all there
    assert len(report(path).get_volumetric_roi_measurement_groups()) == len(inp.findings)


def test_no_findings_is_said_explicitly(cases: dict[str, Case]) -> None:
    # Given a study in which the model found nothing
    case = cases["none"]
    # Then the report has no measurement group, but keeps the Imaging Measurements
    # and Image Library containers that OHIF reads, empty. (highdicom 0.28's
    # get_*_measurement_groups raise AttributeError on a container without children,
    # so this is checked on the dataset.)
    assert "ContentSequence" not in root_item(case.path, ("126010", "DCM"))
    assert "ContentSequence" not in root_item(case.path, ("111028", "DCM"))
    # And it says, coded and in words, that no nodule was found
    evaluations = root_item(case.path, (QUALITATIVE_EVALUATIONS.value, "UMLS"))
    coded = [item for item in evaluations.ContentSequence if item.ValueType == "CODE"]
    assert [(concept(i), i.ConceptCodeSequence[0].CodeValue) for i in coded] == [
        (("27925004", "SCT"), "272519000")  # Nodule: Absent
    ]
    (statement,) = texts(evaluations, ("121106", "DCM"))
    assert statement.startswith("No nodule detected by AI")
    assert UNVERIFIED in statement
    # And there is no recommendation for nothing
    assert texts(evaluations, ("121075", "DCM")) == []


def test_without_a_seg_the_whole_finding_measurements_stay_in_the_report(
    cases: dict[str, Case],
) -> None:
    # Given a result encoded without its SEG
    inp = cases["two"].inp
    # When it is encoded
    sr = build_sr(inp, None)
    content = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    # Then each finding's volume, HU and probability are in a TID 1501 group
    assert content.get_volumetric_roi_measurement_groups() == []
    for number in range(1, len(inp.findings) + 1):
        uid = inp.uid("finding", number)
        (group,) = content.get_image_measurement_groups(tracking_uid=uid)
        assert {m.name.value for m in group.get_measurements()} == {
            "118565006",
            "112031",
            "122157",
        }
        # And the axis lines are still there
        assert len(content.get_planar_roi_measurement_groups(tracking_uid=uid)) == 2


# -- bad input -----------------------------------------------------------------------------


def test_a_key_slice_that_is_not_the_named_instance_is_refused(cases: dict[str, Case]) -> None:
    case = cases["one"]
    finding = dataclasses.replace(case.inp.findings[0], key_sop_instance_uid="1.2.3")
    inp = dataclasses.replace(case.inp, findings=(finding,))
    with pytest.raises(ValueError, match="key slice"):
        build_sr(inp, case.seg)


def test_a_seg_of_other_findings_is_refused(cases: dict[str, Case]) -> None:
    # Given the two-nodule result and the SEG of the one-nodule result
    with pytest.raises(ValueError, match="segment 2"):
        build_sr(cases["two"].inp, cases["one"].seg)
