"""What every output is built from, and what every output shares.

Every result object belongs to the source's patient and study, in a new series whose
description says it is AI-generated and unverified and names the model; it carries a
Contributing Equipment item naming the algorithm (IHE AIR) and deterministic UIDs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from node import __version__
from node.domain import Finding, ModelInfo
from node.domain.volume import Volume
from node.results.uids import result_uid

OutputKind = Literal["seg", "sr", "sc", "kos", "pdf"]
ALL_OUTPUTS: tuple[OutputKind, ...] = ("seg", "sr", "sc", "kos", "pdf")
DecisionSupport = Literal["fleischner-2017", "none"]

MANUFACTURER = "Radnode"
# IHE AI Results: the purpose of reference of the algorithm's Contributing Equipment.
PROCESSING_ALGORITHM = ("Newcode1", "99IHE", "Processing Algorithm")
UNVERIFIED = "AI-generated, not verified by a radiologist"
# Series numbers for results start here, skipping any the source study uses.
FIRST_RESULT_SERIES_NUMBER = 9001
_KIND_ORDER: tuple[OutputKind, ...] = ALL_OUTPUTS

# Patient and study attributes copied from the source (PS3.3 C.7.1.1, C.7.2.1, plus
# the general equipment's neighbours that identify the study).
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)


@dataclass(frozen=True, eq=False)
class EncodingInput:
    """A job's result and its source, ready to encode.

    `sources` are the source instances' headers (pixel data not needed) in volume
    order: sources[k] is slice k of `volume`. `findings_labels` numbers the voxels of
    finding n (1-based, in the order of `findings`); `segments` holds the masks of
    the other segments (such as Lung) by label.
    """

    job_id: str
    model: ModelInfo
    volume: Volume
    sources: tuple[Dataset, ...]
    findings: tuple[Finding, ...]
    findings_labels: npt.NDArray[np.uint16]
    segments: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    include_segments: tuple[str, ...] = ()  # which of `segments` go into the SEG
    decision_support: DecisionSupport = "fleischner-2017"
    series_numbers_in_use: frozenset[int] = frozenset()

    def uid(self, kind: str, index: int = 0) -> str:
        """The deterministic UID of one output object or series of this job."""
        return result_uid(self.job_id, self.model.version, kind, index)

    def finding_mask(self, number: int) -> npt.NDArray[np.bool_]:
        """The voxels of finding `number` (1-based)."""
        mask: npt.NDArray[np.bool_] = self.findings_labels == number
        return mask


# Used when the source study has no StudyDate (Content Date is Type 1 in most results).
FALLBACK_DATE = "19000101"


def content_date_time(source: Dataset) -> tuple[str, str]:
    """Content and series date and time of every result: the source study's.

    A job encoded again must give the same bytes and holds no time of its own; the
    study's date keeps the results next to their study in date-sorted lists. An empty
    StudyTime (common after de-identification) counts as midnight.
    """
    date = str(source.get("StudyDate") or "") or FALLBACK_DATE
    time = str(source.get("StudyTime") or "") or "000000"
    return date, time


def series_number_for(kind: OutputKind, in_use: Iterable[int]) -> int:
    """A series number for `kind` that no series of the source study has.

    Numbers are given in a fixed order of kinds from FIRST_RESULT_SERIES_NUMBER up,
    skipping used ones, so the same study always gives the same numbers.
    """
    used = set(in_use)
    number = FIRST_RESULT_SERIES_NUMBER
    for each in _KIND_ORDER:
        while number in used:
            number += 1
        if each == kind:
            return number
        number += 1
    raise ValueError(f"unknown output kind {kind!r}")


def series_description(kind: str, model: ModelInfo) -> str:
    """Says AI, names the model and what the series holds; at most 64 characters."""
    text = f"AI {kind} {model.name} {model.version} UNVERIFIED"
    return text[:64]


def copy_patient_study(target: Dataset, source: Dataset) -> None:
    """Give `target` the source's patient and study (same patient, same study)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(target, keyword, source[keyword].value)
    if "Laterality" in source:
        target.Laterality = source.Laterality


def contributing_equipment(model: ModelInfo) -> DicomSequence:
    """The Contributing Equipment item IHE AIR asks for: the algorithm that made it."""
    item = Dataset()
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = PROCESSING_ALGORITHM
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = model.name[:64]
    item.SoftwareVersions = [model.version, f"radnode {__version__}"]
    item.DeviceUID = model.device_uid
    item.ContributionDescription = f"{model.name} {model.version}: {UNVERIFIED}"[:1024]
    return DicomSequence([item])


def add_contributing_equipment(target: Dataset, model: ModelInfo) -> None:
    """Append the algorithm's item to the object's Contributing Equipment Sequence."""
    existing = list(target.get("ContributingEquipmentSequence", []))
    target.ContributingEquipmentSequence = DicomSequence(
        existing + list(contributing_equipment(model))
    )
