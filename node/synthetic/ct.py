"""A synthetic CT series written as a proper DICOM series with geometry.

The pixels are a smooth body-like ellipse with noise, so compressors behave as on
real CT; the identities are fictitious and marked as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True, slots=True)
class SyntheticSeries:
    """What was written: the UIDs and the files, in slice order."""

    study_uid: str
    series_uid: str
    sop_instance_uids: tuple[str, ...]
    paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class SliceUIDs:
    """The UIDs one synthetic slice carries."""

    study: str
    series: str
    frame_of_reference: str
    sop_instance: str


def ct_slice_header(
    uids: SliceUIDs,
    *,
    patient_name: str,
    patient_id: str,
    accession_number: str,
    series_number: int,
    instance_number: int,
    rows: int,
    columns: int,
    study_description: str = "SYNTHETIC CHEST CT",
    series_description: str = "SYNTHETIC AXIAL",
) -> Dataset:
    """A CT slice's header with fictitious identities: everything but geometry and pixels.

    Pixels are int16 stored values with rescale intercept -1024 (HU = value - 1024).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(uids.sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uids.sop_instance
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    ds.AccessionNumber = accession_number
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.Modality = "CT"
    ds.Manufacturer = "Radnode synthetic"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientPosition = "FFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    return ds


def _body(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = rows / 2, cols / 2
    inside = ((y - cy) / (rows * 0.38)) ** 2 + ((x - cx) / (cols * 0.45)) ** 2 <= 1
    image = np.where(inside, 1040, 24).astype(np.int16)  # stored values; HU = v - 1024
    image += rng.normal(0, 12, size=image.shape).astype(np.int16)
    return image


def write_ct_series(
    folder: Path,
    slices: int = 10,
    rows: int = 64,
    cols: int = 64,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "SYNTHETIC^PATIENT",
    patient_id: str = "SYN-0001",
    accession_number: str = "SYNACC1",
    series_number: int = 1,
    slice_thickness_mm: float = 1.25,
    seed: int = 0,
) -> SyntheticSeries:
    """Write `slices` axial CT images of `rows` x `cols` to `folder`, one file each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid(prefix=None)
    series_uid = series_uid or generate_uid(prefix=None)
    frame_uid = generate_uid(prefix=None)
    base = _body(rows, cols, rng)
    uids: list[str] = []
    paths: list[Path] = []
    for i in range(slices):
        sop_uid = generate_uid(prefix=None)
        ds = ct_slice_header(
            SliceUIDs(study_uid, series_uid, frame_uid, sop_uid),
            patient_name=patient_name,
            patient_id=patient_id,
            accession_number=accession_number,
            series_number=series_number,
            instance_number=i + 1,
            rows=rows,
            columns=cols,
        )
        ds.ImagePositionPatient = [-cols / 2 * 0.7, -rows / 2 * 0.7, -i * slice_thickness_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = slice_thickness_mm
        ds.SliceLocation = -i * slice_thickness_mm
        pixels = base + rng.normal(0, 4, size=base.shape).astype(np.int16)
        ds.PixelData = pixels.astype("<i2").tobytes()
        path = folder / f"ct-{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        uids.append(sop_uid)
        paths.append(path)
    return SyntheticSeries(study_uid, series_uid, tuple(uids), tuple(paths))
