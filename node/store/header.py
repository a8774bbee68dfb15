"""Read the few attributes the node needs from an instance, without its pixel data."""

from __future__ import annotations

import re
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from node.domain import InstanceHeader
from node.errors import InvalidInput
from node.store.scan import scan_attributes

# A UID is digits separated by single dots, at most 64 characters (PS3.5 9.1). The
# node also uses UIDs as folder names, so this check keeps paths inside the root.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# Received data sets are read leniently: values outside their VR's rules are common in
# the field and pydicom would warn on every one. The node checks what it relies on
# (the UIDs below) itself and rejects with a reason.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

_REQUIRED_UIDS = (
    ("StudyInstanceUID", "study_uid"),
    ("SeriesInstanceUID", "series_uid"),
    ("SOPInstanceUID", "sop_instance_uid"),
)
_WANTED: list[BaseTag | int] = [
    Tag(keyword)
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "StudyDate",
        "StudyDescription",
        "PatientName",
        "PatientID",
    )
]


_LAST_WANTED = max(_WANTED)
_KEYWORD_BY_TAG = {int(tag): keyword_for_tag(tag) for tag in _WANTED}


def _past_wanted(tag: Any, _vr: Any, _length: int) -> bool:
    """Stop parsing after the last attribute the node reads (data sets are tag-ordered)."""
    return bool(tag > _LAST_WANTED)


def check_uid(name: str, value: Any) -> str:
    """Return `value` as a UID string, or raise InvalidInput naming the attribute."""
    text = str(value or "").strip().rstrip("\x00")
    if not text:
        raise InvalidInput(f"{name} is missing or empty")
    if len(text) > 64 or not _UID.match(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidInput(f"{name} {shown!r} is not a valid UID (digits and dots, at most 64)")
    return text


def read_header(data: bytes) -> InstanceHeader:
    """Parse a DICOM file's bytes (preamble and file meta included) up to the pixel data.

    The fast scan reads the usual files; pydicom reads the rest. Raises InvalidInput
    when the bytes are not DICOM, cannot be decoded, or lack the Study, Series or SOP
    Instance UID.
    """
    scanned = scan_attributes(data, _KEYWORD_BY_TAG)
    if scanned is not None:
        syntax, values = scanned
        return _build_header(values.get, syntax, values.get("MediaStorageSOPClassUID", ""))
    return read_header_with_pydicom(data)


def read_header_with_pydicom(data: bytes) -> InstanceHeader:
    """`read_header` through pydicom alone: for what the fast scan declines."""
    try:
        ds = read_partial(BytesIO(data), stop_when=_past_wanted, specific_tags=_WANTED)
        header = _header_from(ds)
    except InvalidInput:
        raise
    except InvalidDicomError as exc:
        raise InvalidInput(f"not a DICOM data set: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidInput(f"the data set cannot be decoded: {type(exc).__name__}: {exc}") from exc
    return header


def _header_from(ds: Dataset) -> InstanceHeader:
    meta = getattr(ds, "file_meta", None)
    return _build_header(
        ds.get,
        str(getattr(meta, "TransferSyntaxUID", "") or ""),
        str(getattr(meta, "MediaStorageSOPClassUID", "") or ""),
    )


def _build_header(
    get: Callable[[str], Any], transfer_syntax: str, media_sop_class: str
) -> InstanceHeader:
    """The header from attribute values (pydicom's, or the fast scan's text)."""
    if not transfer_syntax:
        raise InvalidInput("the file meta information has no TransferSyntaxUID")
    sop_class = str(get("SOPClassUID") or media_sop_class)
    uids = {field: check_uid(keyword, get(keyword)) for keyword, field in _REQUIRED_UIDS}
    series_number = get("SeriesNumber")
    try:
        number = int(series_number) if series_number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return InstanceHeader(
        **uids,
        sop_class_uid=check_uid("SOPClassUID", sop_class),
        transfer_syntax_uid=check_uid("TransferSyntaxUID", transfer_syntax),
        modality=_text(get("Modality")),
        series_number=number,
        series_description=_text(get("SeriesDescription")),
        body_part=_text(get("BodyPartExamined")),
        study_date=_text(get("StudyDate")),
        study_description=_text(get("StudyDescription")),
        patient_name=_text(get("PatientName")),
        patient_id=_text(get("PatientID")),
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()
