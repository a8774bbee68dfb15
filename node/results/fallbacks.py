"""Results for viewers that show neither SEG nor SR (design/ai-results.md): secondary
capture key images, a Key Object Selection that flags the key source slices, and an
Encapsulated PDF summary.

Each object joins the source's patient and study in a series of its own, whose
description says AI and unverified, and carries the algorithm's Contributing
Equipment item. All are deterministic: UIDs come from the job, dates and times from
the source study (as in the SEG), nothing from the clock, so a job encoded again
gives byte-identical files. The pixels and the page are drawn by `keyimages` and
`summary`; this module makes DICOM of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    UID,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

from node import __version__
from node.domain import Finding
from node.domain.volume import Volume
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
from node.results.keyimages import LUNG_WINDOW_LEVEL, LUNG_WINDOW_WIDTH, render_key_image
from node.results.summary import TITLE, render_summary_pdf

# SC Equipment: made by software on a workstation from other images (PS3.3 C.8.6.1).
CONVERSION_TYPE = "WSD"
# The key images are not CT acquisitions: "OT" keeps CT hanging protocols and CT
# window presets off these RGB images.
SC_MODALITY = "OT"
# CID 7010. "Of Interest" is the title legacy viewers show as key images; the others
# name a purpose (teaching, surgery, quality) that an AI selection does not have.
KOS_TITLE = codes.DCM.OfInterest
# The PDF's Concept Name, its coded title: DCM's title for the output of a chest CAD
# (that of the Chest CAD SR). Not a LOINC report title such as 18748-4 "Diagnostic
# imaging study" (CID 7000): those name the radiologist's report, and a RIS or PACS
# may show this page as if it were that report.
SUMMARY_CONCEPT = codes.DCM.ChestCADReport
# Content items of a KOS that select an object (TID 2010 rows 5 to 7).
REFERENCE_VALUE_TYPES = frozenset({"IMAGE", "COMPOSITE", "WAVEFORM"})
# A direction's component gets its letter in Patient Orientation (PS3.3 C.7.6.1.1.1)
# above this, so a slight tilt does not make an axial image oblique ("LH").
ORIENTATION_THRESHOLD = 0.25


def build_key_images(inp: EncodingInput) -> list[Dataset]:
    """One Secondary Capture per finding: its key slice with the finding burned in.

    Instance n shows finding n. RGB, so that the contour has the segment's colour;
    enlarged (see `keyimages`) with Pixel Spacing divided accordingly. No findings
    give no key images.

    Raises
    ------
    ValueError
        A finding's key slice is not in the volume or the sources, or holds none of
        its voxels.
    """
    if not inp.findings:
        return []
    date, time = content_date_time(inp.sources[0])
    series_uid = inp.uid("sc-series")
    series_number = series_number_for("sc", inp.series_numbers_in_use)
    description = series_description("KEY IMAGES", inp.model)
    images = []
    for number, finding in enumerate(inp.findings, start=1):
        source = key_source(inp, finding)
        key = render_key_image(inp, number)
        ds = _new_instance(
            inp,
            source,
            sop_class_uid=SecondaryCaptureImageStorage,
            sop_instance_uid=inp.uid("sc-instance", number),
            series_uid=series_uid,
            series_number=series_number,
            description=description,
            modality=SC_MODALITY,
            instance_number=number,
        )
        if "Laterality" in source:
            ds.Laterality = source.Laterality
        if "BodyPartExamined" in source:
            ds.BodyPartExamined = source.BodyPartExamined
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ConversionType = CONVERSION_TYPE
        ds.SecondaryCaptureDeviceManufacturer = MANUFACTURER
        ds.SecondaryCaptureDeviceManufacturerModelName = inp.model.name[:64]
        ds.SecondaryCaptureDeviceSoftwareVersions = [inp.model.version, f"radnode {__version__}"]
        ds.PatientOrientation = patient_orientation(inp.volume)
        ds.BurnedInAnnotation = "YES"
        ds.ImageComments = f"{UNVERIFIED}: {inp.model.name} {inp.model.version}. {key.label}"
        ds.DerivationDescription = (
            f"Source image in a lung window (W {LUNG_WINDOW_WIDTH:.0f}, "
            f"L {LUNG_WINDOW_LEVEL:.0f}), enlarged {key.scale}x under a banner of "
            f"{key.top} rows, with the AI's contour, axes and measurements burned in"
        )
        ds.SourceImageSequence = DicomSequence([_reference(source)])
        if source.get("LossyImageCompression") == "01":
            ds.LossyImageCompression = "01"
        # Basic Pixel Spacing Calibration macro of the SC Image module: in-plane spacing
        # in the patient, still true on the enlarged slice (the banner shifts, not scales).
        row_mm, column_mm = inp.volume.spacing[1], inp.volume.spacing[2]
        ds.PixelSpacing = [_ds(row_mm / key.scale), _ds(column_mm / key.scale)]
        rows, columns, _ = key.pixels.shape
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelRepresentation = 0
        ds.add_new("PixelData", "OB", np.ascontiguousarray(key.pixels).tobytes())
        images.append(ds)
    return images


def build_kos(inp: EncodingInput, referenced: Sequence[Dataset] = ()) -> Dataset | None:
    """The Key Object Selection flagging each finding's key slice once.

    `referenced` are other results of the job (key images, SEG, SR) to flag as well;
    every referenced instance is listed in the Current Requested Procedure Evidence
    Sequence, by series. None without findings: a KOS must reference at least one
    instance, and flagging only derived objects would flag no image of the study.

    Raises
    ------
    ValueError
        A key slice is not in the sources, or a referenced object belongs to another
        study.
    """
    if not inp.findings:
        return None
    study_uid = str(inp.sources[0].StudyInstanceUID)
    selected: dict[str, Dataset] = {}
    for finding in inp.findings:
        source = key_source(inp, finding)
        selected.setdefault(str(source.SOPInstanceUID), source)
    for ds in referenced:
        if str(ds.StudyInstanceUID) != study_uid:
            raise ValueError(
                f"referenced object {ds.SOPInstanceUID} belongs to study "
                f"{ds.StudyInstanceUID}, not to the source study {study_uid}"
            )
        selected.setdefault(str(ds.SOPInstanceUID), ds)
    objects = list(selected.values())
    model = inp.model
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=model.device_uid,
            name=model.name[:64],
            manufacturer_name=model.manufacturer[:64],
            model_name=model.name[:64],
        ),
    )
    keys = len({f.key_slice for f in inp.findings})
    description = (
        f"{UNVERIFIED}. Key slices of the {len(inp.findings)} finding(s) of "
        f"{model.name} {model.version} ({keys} image(s)), selected by the AI"
        + (", with the AI's result objects of this study" if len(objects) > keys else "")
        + ". Decision support only: a radiologist must review them."
    )
    content = hd.ko.KeyObjectSelection(
        document_title=KOS_TITLE,
        referenced_objects=objects,
        observer_device_context=device,
        description=description,
    )
    date, time = content_date_time(inp.sources[0])
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=objects,
        content=content,
        series_instance_uid=inp.uid("kos-series"),
        series_number=series_number_for("kos", inp.series_numbers_in_use),
        sop_instance_uid=inp.uid("kos-instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description("KEY OBJECTS", model),
        content_date=date,
        content_time=time,
    )
    _unname_references(kos)
    copy_patient_study(kos, inp.sources[0])
    if "Laterality" in kos:  # not in the Key Object Document Series module
        del kos.Laterality
    _drop_clock_values(kos)
    add_contributing_equipment(kos, model)
    return kos


def build_summary(inp: EncodingInput) -> Dataset:
    """The one-page PDF summary (see `summary`) as Encapsulated PDF."""
    pdf = render_summary_pdf(inp)
    source = inp.sources[0]
    date, time = content_date_time(source)
    ds = _new_instance(
        inp,
        source,
        sop_class_uid=EncapsulatedPDFStorage,
        sop_instance_uid=inp.uid("pdf-instance"),
        series_uid=inp.uid("pdf-series"),
        series_number=series_number_for("pdf", inp.series_numbers_in_use),
        description=series_description("SUMMARY", inp.model),
        modality="DOC",
        instance_number=1,
    )
    ds.ConversionType = CONVERSION_TYPE
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = ""  # Type 2: nothing was acquired
    ds.BurnedInAnnotation = "YES"  # the page names the patient
    ds.DocumentTitle = TITLE
    ds.ConceptNameCodeSequence = DicomSequence([_code(SUMMARY_CONCEPT)])
    # The page reports on the whole series analysed, so every source image is a source.
    ds.SourceInstanceSequence = DicomSequence([_reference(s) for s in inp.sources])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    # An odd-length document gets one trailing NUL (ours are made even anyway).
    ds.add_new("EncapsulatedDocument", "OB", pdf + b"\x00" * (len(pdf) % 2))
    return ds


def key_source(inp: EncodingInput, finding: Finding) -> Dataset:
    """The source header of a finding's key slice, checked against its SOP Instance UID.

    Raises
    ------
    ValueError
        The key slice is not in the sources, or is another instance than the finding
        names.
    """
    k = finding.key_slice
    if not 0 <= k < len(inp.sources):
        raise ValueError(
            f"{finding.tracking_id}: key slice {k} is not among the {len(inp.sources)} sources"
        )
    source = inp.sources[k]
    expected = finding.key_sop_instance_uid
    if expected and str(source.SOPInstanceUID) != expected:
        raise ValueError(
            f"{finding.tracking_id}: key slice {k} is instance {source.SOPInstanceUID}, "
            f"but the finding names {expected}; sources must be in volume order"
        )
    return source


def patient_orientation(volume: Volume) -> list[str]:
    """Patient Orientation of the slices' rows and columns ("L", "P", or "LH" oblique).

    Secondary captures have no patient geometry, but this lets a viewer label the
    sides of the image.
    """
    return [_direction(volume.row_direction), _direction(volume.column_direction)]


def _direction(vector: tuple[float, float, float]) -> str:
    """Letters of a direction's main components, the largest first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, +y, +z in DICOM patient space
    order = sorted(range(3), key=lambda axis: -abs(vector[axis]))
    return "".join(
        letters[axis][0 if vector[axis] > 0 else 1]
        for axis in order
        if abs(vector[axis]) > ORIENTATION_THRESHOLD
    )


def _new_instance(
    inp: EncodingInput,
    source: Dataset,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    series_uid: str,
    series_number: int,
    description: str,
    modality: str,
    instance_number: int,
) -> Dataset:
    """A new instance in the source's patient and study, in its own series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    copy_patient_study(ds, source)
    if "Laterality" in ds:  # series level: set by the caller where the IOD has it
        del ds.Laterality
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance_number
    ds.Manufacturer = MANUFACTURER
    add_contributing_equipment(ds, inp.model)
    return ds


def _unname_references(kos: Dataset) -> None:
    """Remove the concept name highdicom gives each selected object ("Source").

    TID 2010 forbids a purpose of reference on the IMAGE, COMPOSITE and WAVEFORM items
    (PixelMed's validator reports each as an error); viewers go by the references.
    """
    for item in kos.ContentSequence:
        if item.ValueType in REFERENCE_VALUE_TYPES and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence


def _drop_clock_values(ds: Dataset) -> None:
    """Remove what highdicom takes from the clock (Type 3 where it sets them)."""
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):
        if keyword in ds:
            delattr(ds, keyword)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    return f"{value:.10g}"[:16]
