"""De-identification for destinations marked `deidentify: true` (a research archive).

The DICOM PS3.15 Basic Application Level Confidentiality Profile, by dicognito:
names, IDs, dates, addresses, institutions and the like are replaced with dummies,
UIDs with pseudonyms, private attributes removed. The pseudonyms come from a keyed
hash (dicognito's randomizer seeded with the node's key), so the same study gets
the same pseudonymous UIDs every time and in every result: an archive can collect
cases, and a result sent again is the same object. The summary PDF names the patient
on the page itself, so it is never sent to such a destination.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

_METHOD = "PS3.15 Basic Confidentiality Profile, dicognito"  # LO: 64 at most
# Free text copied from the source study, which the profile removes (action X) and
# which may hold anything a person typed; the results' own descriptions stay.
_FREE_TEXT = (
    "StudyDescription",
    "StudyComments",
    "PatientComments",
    "AdditionalPatientHistory",
    "ImageComments",
    "ReasonForTheRequestedProcedure",
    "RequestAttributesSequence",
    "AdmittingDiagnosesDescription",
)


class Deidentifier:
    """Applies the profile with pseudonyms keyed by the node's key."""

    def __init__(self, key: bytes) -> None:
        # The seed is a digest of the key: the key itself never reaches the library.
        self._seed = hashlib.sha256(b"radnode-pseudonyms" + key).hexdigest()

    @classmethod
    def from_file(cls, path: Path) -> Deidentifier:
        return cls(path.read_bytes())

    def apply(self, ds: Dataset) -> None:
        """De-identify `ds` in place, with its file meta."""
        Anonymizer(seed=self._seed).anonymize(ds)
        ds.remove_private_tags()
        for keyword in _FREE_TEXT:
            if keyword in ds:
                delattr(ds, keyword)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = _METHOD
        method = Dataset()
        method.CodeValue = "113100"
        method.CodingSchemeDesignator = "DCM"
        method.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = DicomSequence([method])
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
