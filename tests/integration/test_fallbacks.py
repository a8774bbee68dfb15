"""The fallbacks for legacy viewers (key images, KOS, PDF summary): built from the
phantom's result, checked by dicom3tools, read back with pydicom and compared with the
findings they show."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pydicom.config
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EncapsulatedPDFStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
)
from scipy import ndimage

from node.results.context import (
    PATIENT_STUDY_KEYWORDS,
    UNVERIFIED,
    EncodingInput,
    OutputKind,
    series_number_for,
)
from node.results.fallbacks import build_key_images, build_kos, build_summary
from node.results.fleischner import fleischner_2017
from node.results.keyimages import AXIS_COLOR, BANNER_BACKGROUND
from node.results.summary import NO_FINDINGS, TITLE
from tests.helpers import dicom3tools, require_tool, run_tool
from tests.results_helpers import make_encoding_input, to_bytes, validator_messages, write

# dciodvfy warnings we accept, each with its reason; any other warning fails the test.
# - Device UID in our Contributing Equipment item: IHE AI Results asks for it to name
#   the model version, and the current standard has it (Type 3) in the SOP Common
#   Contributing Equipment Sequence; dicom3tools 1.00~20220618 predates that edition.
#   Our item is the first in the SC and the PDF, the second in the KOS (after
#   highdicom's own item).
DEVICE_UID_WARNING = (
    "Warning - </ContributingEquipmentSequence(0018,a001)[{}]/DeviceUID(0018,1002)> - "
    "Attribute is not present in standard DICOM IOD"
)
ALLOWED_WARNINGS = {
    "sc": {DEVICE_UID_WARNING.format(1)},
    "kos": {DEVICE_UID_WARNING.format(2)},
    "pdf": {DEVICE_UID_WARNING.format(1)},
}
# dcentvfy warnings we accept: dicom3tools' tables put Accession Number in the Series IE
# for the CT, SC and Encapsulated PDF IODs but in the Study IE for the KOS, so it warns
# for every pair of a KOS with another object although the values are equal (a test
# below checks that they are). File names are cut from the message, and the two IEs
# put in a fixed order, as both depend on the order of the files.
ALLOWED_ENTITY_WARNINGS = {
    "Warning - Different information entities for attribute - Element=<AccessionNumber> "
    "IE <Series> versus <Study>",
}
A4_MEDIA_BOX = b"/MediaBox [0 0 595.28 841.89]"
# JDK 17 limits XPath expressions below what PixelMed's template checks need.
PIXELMED_XPATH_LIMITS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)


@pytest.fixture(autouse=True)
def strict_pydicom() -> Iterator[None]:
    """Invalid values (too long, wrong VR) raise while building and reading."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    settings.writing_validation_mode = pydicom.config.RAISE
    yield
    settings.reading_validation_mode, settings.writing_validation_mode = saved


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[EncodingInput, Path]:
    """The small phantom's result (two nodules on different slices) and its folder."""
    folder = tmp_path_factory.mktemp("phantom") / "ct"
    return make_encoding_input(folder), folder


@pytest.fixture(scope="module")
def clear(tmp_path_factory: pytest.TempPathFactory) -> EncodingInput:
    """The phantom analysed with nothing found."""
    folder = tmp_path_factory.mktemp("clear") / "ct"
    return make_encoding_input(folder, with_findings=False, job_id="job-test-clear")


@pytest.fixture(scope="module")
def written(
    phantom: tuple[EncodingInput, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Path]]:
    """Every fallback of the phantom's result as files, by kind."""
    inp, _ = phantom
    folder = tmp_path_factory.mktemp("fallbacks")
    key_images = build_key_images(inp)
    kos = build_kos(inp, key_images)
    assert kos is not None
    return {
        "sc": [write(ds, folder / f"sc-{n}.dcm") for n, ds in enumerate(key_images, start=1)],
        "kos": [write(kos, folder / "kos.dcm")],
        "pdf": [write(build_summary(inp), folder / "summary.dcm")],
    }


def entity_warning(line: str) -> str:
    """A dcentvfy warning without its file names, its two IEs in alphabetical order."""
    text = re.sub(r" for file .*$", "", line)
    return re.sub(
        r"IE <(\w+)> versus <(\w+)>",
        lambda m: "IE <{}> versus <{}>".format(*sorted(m.groups())),
        text,
    )


def pdf_content(pdf: bytes) -> bytes:
    """The page's content stream, after checking the file's structure by hand: every
    cross-reference offset points at its object, and the stream has its stated length."""
    end = re.search(rb"startxref\n(\d+)\n%%EOF\n*$", pdf)
    assert end is not None, "no startxref at the end"
    xref = int(end.group(1))
    header = re.match(rb"xref\n0 (\d+)\n", pdf[xref:])
    assert header is not None, "startxref does not point at the xref table"
    table = pdf[xref + header.end() :]
    for number in range(1, int(header.group(1))):
        offset = int(table[20 * number : 20 * number + 10])
        assert pdf[offset:].startswith(b"%d 0 obj" % number), f"object {number} misplaced"
    stream = re.search(rb"/Length (\d+) >>\nstream\n", pdf)
    assert stream is not None
    length = int(stream.group(1))
    assert pdf[stream.end() + length :].startswith(b"\nendstream")
    return pdf[stream.end() : stream.end() + length]


def pdf_text(pdf: bytes) -> str:
    """The page's text in drawing order, one space between strings."""
    strings = re.findall(rb"\(((?:\\.|[^\\)])*)\) Tj", pdf_content(pdf))
    text = " ".join(re.sub(rb"\\(.)", rb"\1", s).decode("cp1252") for s in strings)
    return " ".join(text.split())


def summary_text(inp: EncodingInput) -> str:
    return pdf_text(bytes(build_summary(inp).EncapsulatedDocument))


def referenced_uids(kos: Dataset, sop_class_uid: str) -> list[str]:
    """SOP Instance UIDs of the KOS's content items that reference this SOP class."""
    return [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in kos.ContentSequence
        if "ReferencedSOPSequence" in item
        and item.ReferencedSOPSequence[0].ReferencedSOPClassUID == sop_class_uid
    ]


# -- conformance ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sc", "kos", "pdf"])
def test_every_fallback_passes_dciodvfy_with_only_the_known_warnings(
    written: dict[str, list[Path]], kind: str
) -> None:
    # Given the phantom's fallbacks written as files
    for path in written[kind]:
        # When dciodvfy checks each against its IOD
        errors, warnings = validator_messages([dicom3tools("dciodvfy"), "-new", str(path)])
        # Then there is no error, and no warning beyond the ones we accept
        assert errors == set(), f"{path.name}: {errors}"
        assert warnings == ALLOWED_WARNINGS[kind], f"{path.name}: {warnings}"


def test_the_summary_without_findings_passes_dciodvfy(clear: EncodingInput, tmp_path: Path) -> None:
    # Given a result with nothing found, when its summary is checked
    path = write(build_summary(clear), tmp_path / "summary.dcm")
    errors, warnings = validator_messages([dicom3tools("dciodvfy"), "-new", str(path)])
    # Then it is as clean as the summary of findings
    assert errors == set()
    assert warnings == ALLOWED_WARNINGS["pdf"]


def test_dcentvfy_finds_the_sources_and_the_fallbacks_consistent(
    phantom: tuple[EncodingInput, Path], written: dict[str, list[Path]]
) -> None:
    # Given the source series and every fallback
    _, folder = phantom
    files = sorted(folder.glob("*.dcm")) + [p for paths in written.values() for p in paths]
    # When dcentvfy compares patient, study and series attributes across them
    errors, warnings = validator_messages([dicom3tools("dcentvfy"), *map(str, files)])
    # Then they agree, apart from dicom3tools' own disagreement on Accession Number
    assert errors == set()
    assert {entity_warning(w) for w in warnings} == ALLOWED_ENTITY_WARNINGS


def test_every_fallback_joins_the_source_study_in_a_series_of_its_own(
    phantom: tuple[EncodingInput, Path], written: dict[str, list[Path]]
) -> None:
    inp, _ = phantom
    source = inp.sources[0]
    kinds: tuple[tuple[OutputKind, str], ...] = (
        ("sc", "KEY IMAGES"),
        ("kos", "KEY OBJECTS"),
        ("pdf", "SUMMARY"),
    )
    for kind, content in kinds:
        for path in written[kind]:
            ds = pydicom.dcmread(path)
            # Same patient and study, values equal to the source's
            for keyword in PATIENT_STUDY_KEYWORDS:
                if keyword in source:
                    assert ds[keyword].value == source[keyword].value, (path.name, keyword)
            # A series of its own, named, numbered and marked as AI
            assert ds.SeriesInstanceUID == inp.uid(f"{kind}-series")
            assert ds.SeriesNumber == series_number_for(kind, inp.series_numbers_in_use)
            assert content in ds.SeriesDescription and "UNVERIFIED" in ds.SeriesDescription
            # The algorithm is named as contributing equipment
            items = ds.ContributingEquipmentSequence
            assert any(i.get("DeviceUID") == inp.model.device_uid for i in items)
            # Dates from the study, not the clock
            assert ds.ContentDate == source.StudyDate
            assert "InstanceCreationDate" not in ds


# -- key images ----------------------------------------------------------------------------


def test_key_images_show_the_banner_the_contour_and_the_long_axis(
    phantom: tuple[EncodingInput, Path], written: dict[str, list[Path]]
) -> None:
    inp, _ = phantom
    color = np.array(inp.model.finding_segment.color_rgb, dtype=np.uint8)
    assert len(written["sc"]) == len(inp.findings)
    for number, (path, finding) in enumerate(zip(written["sc"], inp.findings, strict=True), 1):
        # Given key image n read back
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.SOPInstanceUID == inp.uid("sc-instance", number)
        assert ds.PhotometricInterpretation == "RGB" and pixels.shape[2] == 3
        # The enlargement and the banner's height follow from Pixel Spacing and Rows
        rows, columns = inp.volume.shape[1:]
        scale = round(inp.volume.spacing[2] / float(ds.PixelSpacing[1]))
        top = ds.Rows - rows * scale
        assert ds.Columns == columns * scale and scale >= 2 and top > 0
        # Then the banner holds bright text on its dark red
        banner = pixels[:top]
        assert (banner == BANNER_BACKGROUND).all(axis=2).mean() > 0.5
        assert (banner > 200).all(axis=2).sum() > 1000
        # And the finding's outline on its key slice has the segment's colour
        mask = inp.findings_labels[finding.key_slice] == number
        outline = mask & ~ndimage.binary_erosion(mask)
        coloured = 0
        for j, i in zip(*np.nonzero(outline), strict=True):
            block = pixels[top + j * scale : top + (j + 1) * scale, i * scale : (i + 1) * scale]
            coloured += bool((block == color).all(axis=2).any())
        assert coloured >= 0.9 * outline.sum(), (coloured, outline.sum())
        # But the inside of the finding is left as it was, for the radiologist to see
        inside = ndimage.binary_erosion(mask, iterations=3)
        jj, ii = np.nonzero(inside)
        assert (
            not (pixels[top + jj * scale + scale // 2, ii * scale + scale // 2] == color)
            .all(axis=1)
            .any()
        )
        # And the long axis is drawn through its midpoint
        mid = np.mean(finding.long_axis_endpoints_mm, axis=0)
        kji = np.linalg.solve(inp.volume.affine[:3, :3], mid - inp.volume.affine[:3, 3])
        y, x = (
            top + round(kji[1] * scale + (scale - 1) / 2),
            round(kji[2] * scale + (scale - 1) / 2),
        )
        near = pixels[y - 2 : y + 3, x - 2 : x + 3]
        assert (near == AXIS_COLOR).all(axis=2).any()


def test_key_images_reference_their_source_and_claim_no_geometry(
    phantom: tuple[EncodingInput, Path], written: dict[str, list[Path]]
) -> None:
    inp, _ = phantom
    for path, finding in zip(written["sc"], inp.findings, strict=True):
        ds = pydicom.dcmread(path)
        (reference,) = ds.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == finding.key_sop_instance_uid
        assert reference.ReferencedSOPClassUID == CTImageStorage
        assert ds.BurnedInAnnotation == "YES" and ds.ConversionType == "WSD"
        assert ds.ImageType == ["DERIVED", "SECONDARY"]
        assert ds.PatientOrientation == ["L", "P"]
        assert UNVERIFIED in ds.ImageComments and finding.tracking_id in ds.ImageComments
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID"):
            assert keyword not in ds


def test_no_findings_give_no_key_images_and_no_kos(clear: EncodingInput) -> None:
    # Given a result with nothing found, when the fallbacks are built
    # Then there is no key image, and no KOS (it would flag no image of the study)
    assert build_key_images(clear) == []
    assert build_kos(clear, []) is None


# -- KOS -----------------------------------------------------------------------------------


def test_the_kos_flags_exactly_the_key_slices_and_the_key_images(
    phantom: tuple[EncodingInput, Path], written: dict[str, list[Path]]
) -> None:
    inp, _ = phantom
    # Given the KOS read back
    kos = pydicom.dcmread(written["kos"][0])
    assert kos.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert kos.SOPInstanceUID == inp.uid("kos-instance")
    # Then its title is "Of Interest" and its description says AI and unverified
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")
    (text,) = [
        i.TextValue
        for i in kos.ContentSequence
        if i.ValueType == "TEXT"
        and i.ConceptNameCodeSequence[0].CodeValue == "113012"  # Key Object Description
    ]
    assert UNVERIFIED in text and inp.model.name in text
    # And it flags the key source slices, once each, and the key images
    keys = [f.key_sop_instance_uid for f in inp.findings]
    assert referenced_uids(kos, CTImageStorage) == keys
    sc_uids = [pydicom.dcmread(p).SOPInstanceUID for p in written["sc"]]
    assert referenced_uids(kos, SecondaryCaptureImageStorage) == sc_uids
    # And its evidence lists every referenced instance, by series
    evidence = {
        series.SeriesInstanceUID: [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence]
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
    }
    assert evidence == {inp.volume.series_uid: keys, inp.uid("sc-series"): sc_uids}
    # And highdicom reads it back with the same selection
    selection = hd.ko.KeyObjectSelectionDocument.from_dataset(kos).content.get_references()
    assert [i.referenced_sop_instance_uid for i in selection] == keys + sc_uids
    # And the device that chose them is the model
    device_uids = [i.UID for i in kos.ContentSequence if i.get("ValueType") == "UIDREF"]
    assert device_uids == [inp.model.device_uid]


def test_pixelmed_finds_the_kos_template_valid(written: dict[str, list[Path]]) -> None:
    # Given the KOS, when PixelMed checks it against TID 2010 (dciodvfy does not
    # check templates)
    jar = require_tool("/usr/share/java/pixelmed.jar")
    done = run_tool(
        [
            require_tool("/usr/bin/java"),
            *PIXELMED_XPATH_LIMITS,
            "-cp",
            jar,
            "com.pixelmed.validate.DicomSRValidator",
            str(written["kos"][0]),
        ]
    )
    # Then it finds the template and no error in it
    output = done.stdout + done.stderr
    assert "Found Root Template TID_2010" in output, output
    assert "Error" not in output, output


def test_the_kos_flags_a_key_slice_shared_by_two_findings_once(
    phantom: tuple[EncodingInput, Path],
) -> None:
    # Given two findings measured on the same slice
    inp, _ = phantom
    first, second = inp.findings
    shared = dataclasses.replace(
        second, key_slice=first.key_slice, key_sop_instance_uid=first.key_sop_instance_uid
    )
    kos = build_kos(dataclasses.replace(inp, findings=(first, shared)))
    # Then the slice is flagged once
    assert kos is not None
    assert referenced_uids(kos, CTImageStorage) == [first.key_sop_instance_uid]


def test_the_kos_refuses_objects_of_another_study(phantom: tuple[EncodingInput, Path]) -> None:
    inp, _ = phantom
    stranger = Dataset()
    stranger.StudyInstanceUID = "2.25.1"
    stranger.SeriesInstanceUID = "2.25.2"
    stranger.SOPInstanceUID = "2.25.3"
    stranger.SOPClassUID = SecondaryCaptureImageStorage
    with pytest.raises(ValueError, match="not to the source study"):
        build_kos(inp, [stranger])


def test_a_key_slice_that_is_not_the_findings_instance_is_refused(
    phantom: tuple[EncodingInput, Path],
) -> None:
    inp, _ = phantom
    wrong = dataclasses.replace(inp.findings[0], key_sop_instance_uid="2.25.999")
    with pytest.raises(ValueError, match="volume order"):
        build_kos(dataclasses.replace(inp, findings=(wrong,)))


# -- summary -------------------------------------------------------------------------------


def test_the_summary_is_an_a4_pdf_with_the_findings_and_both_risk_columns(
    phantom: tuple[EncodingInput, Path], written: dict[str, list[Path]]
) -> None:
    inp, _ = phantom
    # Given the summary read back
    ds = pydicom.dcmread(written["pdf"][0])
    assert ds.SOPClassUID == EncapsulatedPDFStorage and ds.Modality == "DOC"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.DocumentTitle == TITLE and ds.BurnedInAnnotation == "YES"
    concept = ds.ConceptNameCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator) == ("112000", "DCM")
    assert len(ds.SourceInstanceSequence) == len(inp.sources)
    pdf = bytes(ds.EncapsulatedDocument)
    # Then it is a small, whole, one-page A4 PDF
    assert pdf.startswith(b"%PDF-1.4") and len(pdf) == ds.EncapsulatedDocumentLength
    assert len(pdf) % 2 == 0 and len(pdf) < 300_000
    assert A4_MEDIA_BOX in pdf and pdf.count(b"/Type /Page ") == 1
    text = pdf_text(pdf)
    # With the title, the patient, the model and every finding
    assert TITLE in text
    assert "SYNTHETIC, PATIENT" in text and str(inp.sources[0].PatientID) in text
    assert f"{inp.model.name} {inp.model.version}" in text and inp.model.device_uid in text
    for finding in inp.findings:
        assert finding.tracking_id in text
        assert f"{finding.long_axis_mm:.1f} x {finding.short_axis_mm:.1f}" in text
        assert f"{finding.volume_mm3:.0f}" in text and f"{finding.score:.2f}" in text
    # And the guideline's recommendation for both risks, with its caveat
    recommendation = fleischner_2017(inp.findings)
    assert recommendation is not None
    for part in (recommendation.low_risk, recommendation.high_risk, recommendation.caveat):
        assert part in text
    assert "Fleischner" in text and "Low-risk patient" in text and "High-risk patient" in text
    assert "Not for clinical use" in text and "Intended use" in text


def test_ghostscript_reads_the_summary(written: dict[str, list[Path]], tmp_path: Path) -> None:
    # Given the hand-written PDF, when a real PDF reader extracts its text
    pdf = tmp_path / "summary.pdf"
    pdf.write_bytes(bytes(pydicom.dcmread(written["pdf"][0]).EncapsulatedDocument))
    done = run_tool(
        [require_tool("/usr/bin/gs"), "-q", "-dSAFER", "-sDEVICE=txtwrite", "-o", "-", str(pdf)]
    )
    # Then it reads it without complaint and finds the title
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower()
    assert TITLE in " ".join(done.stdout.split())


def test_the_summary_says_so_when_nothing_was_found(clear: EncodingInput) -> None:
    text = summary_text(clear)
    assert NO_FINDINGS in text
    assert "Fleischner" not in text and "Low-risk" not in text


def test_the_summary_gives_no_recommendation_when_decision_support_is_off(
    phantom: tuple[EncodingInput, Path],
) -> None:
    inp, _ = phantom
    text = summary_text(dataclasses.replace(inp, decision_support="none"))
    recommendation = fleischner_2017(inp.findings)
    assert recommendation is not None
    assert inp.findings[0].tracking_id in text
    assert "Fleischner" not in text and "Low-risk" not in text
    assert recommendation.low_risk not in text and recommendation.caveat not in text


# -- determinism ---------------------------------------------------------------------------


def test_building_again_gives_the_same_bytes(phantom: tuple[EncodingInput, Path]) -> None:
    # Given the same result encoded twice
    inp, _ = phantom

    def build() -> dict[str, list[bytes]]:
        key_images = build_key_images(inp)
        kos = build_kos(inp, key_images)
        assert kos is not None
        return {
            "sc": [to_bytes(ds) for ds in key_images],
            "kos": [to_bytes(kos)],
            "pdf": [to_bytes(build_summary(inp))],
        }

    first, second = build(), build()
    # Then every object is byte for byte the same
    for kind in first:
        assert first[kind] == second[kind], kind
