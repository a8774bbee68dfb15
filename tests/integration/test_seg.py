"""The job's DICOM Segmentation: built from a phantom result with known masks, checked
by dicom3tools, read back with highdicom and compared voxel for voxel; on the shared
data, the model's own SEG of LIDC-IDRI-0001 against a reader's reference SEG."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.config
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from bench import lidc
from bench.accuracy import run_model
from node.inference.package import ModelRegistry
from node.results.context import PATIENT_STUDY_KEYWORDS, EncodingInput
from node.results.seg import build_seg
from tests.helpers import dicom3tools
from tests.results_helpers import REPO, make_encoding_input, to_bytes, validator_messages, write
from tests.results_helpers import strict_pydicom as strict_pydicom_settings

BoolArray = npt.NDArray[np.bool_]

# dciodvfy warnings we accept, each with its reason; any other warning fails the test.
# - Device UID in the Contributing Equipment item: IHE AI Results asks for it to name
#   the model version, and the current standard has it (Type 3) in the SOP Common
#   Contributing Equipment Sequence (highdicom 0.28's tables list it); dicom3tools
#   1.00~20220618 predates that edition. Item 3: after highdicom's acquisition and
#   library items comes ours.
ALLOWED_WARNINGS = {
    "Warning - </ContributingEquipmentSequence(0018,a001)[3]/DeviceUID(0018,1002)> - "
    "Attribute is not present in standard DICOM IOD",
}
# On LIDC-IDRI-0001 also: the de-identified source has empty StudyTime and StudyID
# (Type 2), which the SEG copies as they are, since it belongs to the same study.
LIDC_SOURCE_WARNINGS = {
    "Warning - </StudyTime(0008,0030)> - Missing attribute or value that would be "
    "needed to build DICOMDIR",
    "Warning - </StudyID(0020,0010)> - Missing attribute or value that would be "
    "needed to build DICOMDIR",
}
LIDC_NODULE_MM = (56.0, 86.0, -116.0)


@pytest.fixture(autouse=True)
def strict_pydicom() -> Iterator[None]:
    """Invalid values raise while building and reading, as in highdicom's tests."""
    with strict_pydicom_settings():
        yield


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[EncodingInput, Path]:
    """The small phantom's result (two nodules and the lungs) and its source folder."""
    folder = tmp_path_factory.mktemp("phantom")
    return make_encoding_input(folder / "ct"), folder / "ct"


def expected_masks(inp: EncodingInput) -> list[BoolArray]:
    """Segment n's mask (index n - 1): findings in order, then included segments."""
    masks = [inp.finding_mask(n) for n in range(1, len(inp.findings) + 1)]
    return masks + [inp.segments[label] for label in inp.include_segments]


def masks_by_source(seg: hd.seg.Segmentation, inp: EncodingInput) -> npt.NDArray[np.uint8]:
    """(slices, rows, columns, segments) in volume order, placed by source instance."""
    pixels: npt.NDArray[np.uint8] = seg.get_pixels_by_source_instance(
        list(inp.volume.sop_instance_uids), assert_missing_frames_are_empty=True
    )
    return pixels


# -- conformance ---------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless])
def test_the_seg_passes_dciodvfy_with_only_the_known_warning(
    phantom: tuple[EncodingInput, Path], tmp_path: Path, syntax: str
) -> None:
    # Given the phantom's result
    inp, _ = phantom
    # When it is encoded as a SEG in either transfer syntax
    path = write(build_seg(inp, transfer_syntax=syntax), tmp_path / "seg.dcm")
    # Then dciodvfy finds no error, and no warning beyond the one we accept
    errors, warnings = validator_messages([dicom3tools("dciodvfy"), "-new", str(path)])
    assert not errors
    assert warnings == ALLOWED_WARNINGS


def test_dcentvfy_finds_the_seg_consistent_with_its_sources(
    phantom: tuple[EncodingInput, Path], tmp_path: Path
) -> None:
    # Given the phantom's source files and its SEG
    inp, ct = phantom
    path = write(build_seg(inp), tmp_path / "seg.dcm")
    # When dcentvfy compares patient, study and frame of reference across all of them
    errors, warnings = validator_messages(
        [dicom3tools("dcentvfy"), *map(str, sorted(ct.glob("*.dcm"))), str(path)]
    )
    # Then they agree
    assert not errors
    assert not warnings


# -- content, read back with highdicom -------------------------------------------------


def test_each_finding_is_a_segment_with_its_tracking_uid_codes_and_algorithm(
    phantom: tuple[EncodingInput, Path], tmp_path: Path
) -> None:
    # Given the phantom's two nodules and the lungs to include
    inp, _ = phantom
    model = inp.model
    # When the SEG is written and read back
    seg = hd.seg.segread(write(build_seg(inp), tmp_path / "seg.dcm"))
    # Then segment n is finding n, then comes Lung
    assert seg.SegmentationType == "BINARY"
    assert seg.segment_numbers == [1, 2, 3]
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels == ["Nodule 1", "Nodule 2", "Lung"]
    nodule, lung = model.finding_segment, next(s for s in model.segments if s.label == "Lung")
    for number, finding in enumerate(inp.findings, start=1):
        description = seg.get_segment_description(number)
        # And each finding carries the tracking UID the SR uses for the same finding
        assert description.tracking_uid == inp.uid("finding", number)
        assert description.tracking_id == finding.tracking_id
        assert description.segmented_property_type == hd.sr.CodedConcept(
            nodule.type.value, nodule.type.scheme, nodule.type.meaning
        )
        assert description.segmented_property_category == hd.sr.CodedConcept(
            nodule.category.value, nodule.category.scheme, nodule.category.meaning
        )
        assert nodule.anatomic_region is not None
        assert [c.value for c in description.anatomic_regions] == [nodule.anatomic_region.value]
        assert list(description.RecommendedDisplayCIELabValue) == list(
            hd.color.CIELabColor.from_rgb(*nodule.color_rgb).value
        )
    lung_description = seg.get_segment_description(3)
    assert lung_description.segmented_property_type.value == lung.type.value
    assert lung_description.tracking_uid is None
    assert list(lung_description.RecommendedDisplayCIELabValue) == list(
        hd.color.CIELabColor.from_rgb(*lung.color_rgb).value
    )
    # And every segment is AUTOMATIC, made by the model, of the AI family
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert description.algorithm_identification is not None
        algorithm = description.algorithm_identification[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
            model.name,
            model.version,
        )
        family = algorithm.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")


def test_frames_reference_their_source_slices_and_masks_match_voxel_for_voxel(
    phantom: tuple[EncodingInput, Path], tmp_path: Path
) -> None:
    # Given the phantom's result with its known masks
    inp, _ = phantom
    masks = expected_masks(inp)
    # When the SEG is written and read back
    path = write(build_seg(inp), tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    # Then highdicom, placing frames by their source instance, gives the masks back
    pixels = masks_by_source(seg, inp)
    for index, mask in enumerate(masks):
        assert np.array_equal(pixels[..., index].astype(bool), mask), f"segment {index + 1}"
    # And each frame names the source slice it lies on, by UID and by position
    # (checked here without highdicom), and holds that slice of its segment
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    slice_of = {uid: k for k, uid in enumerate(inp.volume.sop_instance_uids)}
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        k = slice_of[source.ReferencedSOPInstanceUID]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, inp.volume.to_patient([k, 0, 0]), atol=0.01)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        assert np.array_equal(frames[index].astype(bool), masks[number - 1][k])
    # And empty frames are left out: one frame per segment and slice with voxels
    assert int(ds.NumberOfFrames) == sum(int(m.any(axis=(1, 2)).sum()) for m in masks)


def test_the_seg_belongs_to_the_source_patient_and_study_in_a_new_series(
    phantom: tuple[EncodingInput, Path],
) -> None:
    # Given the phantom's result, its headers also carrying the optional patient and
    # study attributes and a laterality
    phantom_inp, _ = phantom
    sources = tuple(copy.deepcopy(ds) for ds in phantom_inp.sources)
    for ds in sources:
        ds.IssuerOfPatientID, ds.PatientAge, ds.Laterality = "RADNODE-TEST", "070Y", "R"
    inp = dataclasses.replace(phantom_inp, sources=sources)
    source = sources[0]
    # When it is encoded
    seg = build_seg(inp)
    # Then patient and study are the source's
    for keyword in (*PATIENT_STUDY_KEYWORDS, "Laterality"):
        assert keyword not in source or seg[keyword].value == source[keyword].value, keyword
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    # And it is a new series with a number the study does not use
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SeriesNumber not in inp.series_numbers_in_use | {source.SeriesNumber}
    assert seg.InstanceNumber == 1
    # And it says it is AI-generated, unverified, and which model made it
    assert seg.Modality == "SEG"
    assert "AI" in seg.SeriesDescription and inp.model.name in seg.SeriesDescription
    assert "not verified" in seg.ContentDescription
    assert seg.ContentLabel == "AI_LUNG_NODULES"
    assert (seg.Manufacturer, seg.ManufacturerModelName) == ("Radnode", inp.model.name)
    assert inp.model.version in seg.SoftwareVersions
    assert seg.DeviceSerialNumber == inp.model.device_uid


def test_contributing_equipment_names_the_algorithm_as_ihe_air_asks(
    phantom: tuple[EncodingInput, Path],
) -> None:
    # Given the phantom's result
    inp, _ = phantom
    # When it is encoded
    seg = build_seg(inp)
    # Then one Contributing Equipment item is the processing algorithm (99IHE Newcode1)
    # with the model's Device UID
    algorithms = [
        item
        for item in seg.ContributingEquipmentSequence
        if (
            item.PurposeOfReferenceCodeSequence[0].CodeValue,
            item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator,
        )
        == ("Newcode1", "99IHE")
    ]
    assert len(algorithms) == 1
    assert algorithms[0].DeviceUID == inp.model.device_uid
    assert algorithms[0].ManufacturerModelName == inp.model.name


# -- determinism -------------------------------------------------------------------------


def test_two_builds_are_byte_identical_with_the_expected_uids_and_dates(
    phantom: tuple[EncodingInput, Path],
) -> None:
    # Given the phantom's result
    inp, _ = phantom
    # When it is encoded twice (as a job run again would)
    first, second = build_seg(inp), build_seg(inp)
    # Then the files are the same, byte for byte
    assert to_bytes(first) == to_bytes(second)
    # And the UIDs are the job's deterministic ones
    assert first.SeriesInstanceUID == inp.uid("seg-series")
    assert first.SOPInstanceUID == inp.uid("seg-instance")
    assert first.DimensionOrganizationSequence[0].DimensionOrganizationUID == inp.uid(
        "seg-dimension-organization"
    )
    # And no date comes from the clock: content and series date are the study's
    study = (str(inp.sources[0].StudyDate), str(inp.sources[0].StudyTime))
    assert (str(first.ContentDate), str(first.ContentTime)) == study
    assert (str(first.SeriesDate), str(first.SeriesTime)) == study
    assert "InstanceCreationDate" not in first
    library = [
        item
        for item in first.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == "highdicom"
    ]
    assert library and all("ContributionDateTime" not in item for item in library)


def test_jpeg_2000_lossless_decodes_to_the_same_masks(
    phantom: tuple[EncodingInput, Path], tmp_path: Path
) -> None:
    # Given the phantom's result
    inp, _ = phantom
    # When it is encoded with JPEG 2000 lossless
    path = write(build_seg(inp, transfer_syntax=JPEG2000Lossless), tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    # Then it is compressed, and decodes to the same masks
    assert seg.file_meta.TransferSyntaxUID == JPEG2000Lossless
    pixels = masks_by_source(seg, inp)
    for index, mask in enumerate(expected_masks(inp)):
        assert np.array_equal(pixels[..., index].astype(bool), mask), f"segment {index + 1}"


# -- refusals ----------------------------------------------------------------------------


def test_a_source_off_its_volume_position_is_refused_naming_the_slice(
    phantom: tuple[EncodingInput, Path],
) -> None:
    # Given a result whose source slice 7 header sits 1 mm off across the slice (a
    # shear the volume would have refused), or 1.5 mm along it (over half the 2.5 mm step)
    inp, _ = phantom
    for shift, text in (([1.0, 0, 0], r"\(\+1\.000, \+0\.000, \+0\.000\)"),
                        ([0, 0, 1.5], r"\(\+0\.000, \+0\.000, \+1\.500\)")):  # fmt: skip
        moved = copy.deepcopy(inp.sources[7])
        moved.ImagePositionPatient = [
            float(v) + d for v, d in zip(moved.ImagePositionPatient, shift, strict=True)
        ]
        shifted = dataclasses.replace(inp, sources=(*inp.sources[:7], moved, *inp.sources[8:]))
        # When it is encoded, then it is refused, naming the slice and the offset
        with pytest.raises(ValueError, match=rf"source slice 7 .*{text} mm.*source geometry"):
            build_seg(shifted)


def test_a_slice_a_little_off_the_regular_grid_is_encoded(
    phantom: tuple[EncodingInput, Path],
) -> None:
    # Given a source slice 0.3 mm off the volume's grid along the normal, which the
    # volume accepted (under half a step); its frame takes its own position
    inp, _ = phantom
    moved = copy.deepcopy(inp.sources[7])
    x, y, z = (float(v) for v in moved.ImagePositionPatient)
    moved.ImagePositionPatient = [x, y, z + 0.3]
    shifted = dataclasses.replace(inp, sources=(*inp.sources[:7], moved, *inp.sources[8:]))
    # When it is encoded, then the SEG is built and frame positions follow the sources
    seg = build_seg(shifted)
    positions = {
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID):
        float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        for item in seg.PerFrameFunctionalGroupsSequence
    }  # fmt: skip
    assert positions[str(moved.SOPInstanceUID)] == pytest.approx(z + 0.3)  # lung is there


def test_a_finding_without_voxels_is_refused(phantom: tuple[EncodingInput, Path]) -> None:
    # Given a result whose second finding has lost its voxels
    inp, _ = phantom
    labels = inp.findings_labels.copy()
    labels[labels == 2] = 0
    empty = dataclasses.replace(inp, findings_labels=labels)
    # When it is encoded, then it is refused, naming the finding
    with pytest.raises(ValueError, match=r"finding 2 .*no voxels"):
        build_seg(empty)


def test_a_lossy_or_unknown_transfer_syntax_is_refused(
    phantom: tuple[EncodingInput, Path],
) -> None:
    inp, _ = phantom
    with pytest.raises(ValueError, match="not allowed for a BINARY SEG"):
        build_seg(inp, transfer_syntax="1.2.840.10008.1.2.4.50")


# -- the real case -----------------------------------------------------------------------


def lidc_encoding_input(ct: Path) -> EncodingInput:
    """The reference model's result on LIDC-IDRI-0001, joined with its source headers."""
    volume, result, _, _ = run_model(ct)
    headers = {}
    for path in sorted(ct.iterdir()):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        headers[str(header.SOPInstanceUID)] = header
    sources = tuple(headers[uid] for uid in volume.sop_instance_uids)
    return EncodingInput(
        job_id="job-lidc-idri-0001",
        model=ModelRegistry.load(REPO / "models").get("lung-nodules").info(),
        volume=volume,
        sources=sources,
        findings=tuple(result.findings),
        findings_labels=result.findings_labels,
        segments=result.segments,
        include_segments=("Lung",),
        series_numbers_in_use=frozenset({int(sources[0].SeriesNumber)}),
    )


@pytest.mark.shared_data
def test_the_lidc_nodule_segment_overlaps_the_readers_reference_seg(
    shared_data: Path, tmp_path: Path
) -> None:
    # Given the reference model's result on LIDC-IDRI-0001 and reader 1's SEG of the
    # nodule all four readers marked (made by dcmqi, an independent tool)
    case = shared_data / "data" / "lidc-idri-0001"
    inp = lidc_encoding_input(case / "ct")
    number = 1 + min(
        range(len(inp.findings)),
        key=lambda n: math.dist(inp.findings[n].centroid_mm, LIDC_NODULE_MM),
    )
    assert math.dist(inp.findings[number - 1].centroid_mm, LIDC_NODULE_MM) < 10
    # When the node's SEG is written and both are read back with highdicom, frames
    # placed by the source instance they reference
    path = write(build_seg(inp), tmp_path / "seg.dcm")
    uids = list(inp.volume.sop_instance_uids)
    ours = (
        hd.seg.segread(path)
        .get_pixels_by_source_instance(
            uids, segment_numbers=[number], assert_missing_frames_are_empty=True
        )[..., 0]
        .astype(bool)
    )
    # dcmqi does not state SpatialLocationsPreserved; its frames are the CT's grid
    reference = hd.seg.segread(case / "reference-nodule1-reader1-seg.dcm")
    theirs = reference.get_pixels_by_source_instance(
        uids,
        segment_numbers=[1],
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=True,
    )[..., 0].astype(bool)
    # Then on the reference's slices the nodule overlaps it with Dice 0.6 or more
    covered = theirs.any(axis=(1, 2))
    assert lidc.dice(ours & covered[:, None, None], theirs) >= 0.6
    # And the SEG of a real scanner's series validates too (with the source's own gaps)
    errors, warnings = validator_messages([dicom3tools("dciodvfy"), "-new", str(path)])
    assert not errors
    assert warnings <= ALLOWED_WARNINGS | LIDC_SOURCE_WARNINGS
    errors, _ = validator_messages(
        [dicom3tools("dcentvfy"), *map(str, sorted((case / "ct").iterdir())), str(path)]
    )
    assert not errors
