"""STOW-RS ingest: instances POSTed as multipart/related application/dicom parts.

The URL names a configured source (`/dicomweb/{source}/studies`), so an HTTP sender
gets the same routing as a DIMSE sender with that source's AE title. Each part is
stored as a C-STORE would be: durably, indexed, duplicates recognised, before the
response says it is stored. The response follows PS3.18 10.5: the stored instances
in ReferencedSOPSequence, the others in FailedSOPSequence with a reason, and HTTP
200 (all stored), 202 (some failed) or 409 (none stored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydicom.dataset import Dataset

from node.audit import audit
from node.domain import StoreOutcome
from node.domain import status as st
from node.errors import InvalidInput, StorageFull
from node.store import InstanceStore, read_header

log = structlog.get_logger("radnode.ingest.stow")

DICOM_MEDIA_TYPE = "application/dicom"
_PARAM = re.compile(r';\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]+)')


class StowRequestError(Exception):
    """The request as a whole cannot be read: the HTTP status and the reason."""

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its headers (lower-case names) and its bytes."""

    headers: dict[str, str]
    data: bytes


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """A Content-Type value as (media type, parameters), lower-cased where it is safe."""
    media = value.split(";", 1)[0].strip().lower()
    params = {k.lower(): v.strip('"') for k, v in _PARAM.findall(value)}
    return media, params


def split_multipart(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/related body; StowRequestError (415 or 400) otherwise."""
    media, params = _media_type(content_type)
    if media != "multipart/related":
        raise StowRequestError(
            415,
            f"Content-Type {media or 'missing'}: STOW-RS takes multipart/related; "
            f'type="{DICOM_MEDIA_TYPE}"',
        )
    kind = params.get("type", DICOM_MEDIA_TYPE).lower()
    if kind != DICOM_MEDIA_TYPE:
        raise StowRequestError(
            415, f"multipart type {kind}: this node takes {DICOM_MEDIA_TYPE} parts only"
        )
    boundary = params.get("boundary")
    if not boundary:
        raise StowRequestError(400, "the multipart Content-Type has no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise StowRequestError(400, "the body is not a complete multipart message")
    parts: list[Part] = []
    for chunk in chunks[1:-1]:
        # Each part: CRLF, headers, CRLF CRLF, content, CRLF (before the next delimiter).
        chunk = chunk.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            if chunk.startswith(b"\r\n"):  # a part with no headers
                head, data = b"", chunk[2:]
            else:
                raise StowRequestError(400, f"part {len(parts) + 1} has no header end")
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        parts.append(Part(headers, data))
    if not parts:
        raise StowRequestError(400, "the multipart body holds no part")
    return parts


@dataclass
class StowOutcome:
    """What a STOW-RS request stored and what it refused, per instance."""

    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, instance)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)  # + status, reason

    @property
    def http_status(self) -> int:
        """200 when every instance is stored, 202 when some are, 409 when none is."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def response(self) -> dict[str, Any]:
        """The response body, DICOM JSON (PS3.18 Table 10.5.3-2)."""
        ds = Dataset()
        if self.stored:
            ds.ReferencedSOPSequence = [_item(cls, uid) for cls, uid in self.stored]
        if self.failed:
            items = []
            for cls, uid, code, _reason in self.failed:
                item = _item(cls, uid)
                item.FailureReason = code
                items.append(item)
            ds.FailedSOPSequence = items
        return ds.to_json_dict()


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    if sop_class:
        item.ReferencedSOPClassUID = sop_class
    if sop_instance:
        item.ReferencedSOPInstanceUID = sop_instance
    return item


def receive_stow(
    store: InstanceStore,
    source: str,
    content_type: str,
    body: bytes,
    *,
    study_uid: str | None = None,
    peer: str = "",
) -> StowOutcome:
    """Store every application/dicom part of a STOW-RS request from `source`.

    Raises StowRequestError when the request as a whole cannot be read; a bad part
    fails alone, with its reason, and the others are stored.
    """
    parts = split_multipart(content_type, body)
    outcome = StowOutcome()
    studies_of: dict[str, str] = {}  # SOP instance -> study, for the audit trail
    bound = log.bind(source=source, peer=peer, parts=len(parts))
    for number, part in enumerate(parts, start=1):
        media = _media_type(part.headers.get("content-type", DICOM_MEDIA_TYPE))[0]
        if media != DICOM_MEDIA_TYPE:
            reason = f"part {number} is {media}, not {DICOM_MEDIA_TYPE}"
            outcome.failed.append(("", "", st.CANNOT_UNDERSTAND, reason))
            bound.warning("stow_part_rejected", part=number, reason=reason)
            continue
        try:
            header = read_header(part.data)
        except InvalidInput as exc:
            outcome.failed.append(("", "", st.CANNOT_UNDERSTAND, str(exc)))
            bound.warning("stow_part_rejected", part=number, reason=str(exc))
            continue
        item = (header.sop_class_uid, header.sop_instance_uid)
        fields = {"part": number, "sop_instance_uid": header.sop_instance_uid}
        if study_uid is not None and header.study_uid != study_uid:
            reason = f"the instance belongs to study {header.study_uid}, not {study_uid}"
            outcome.failed.append((*item, st.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, reason))
            bound.warning("stow_part_rejected", reason=reason, **fields)
            continue
        try:
            result = store.store_instance(header, part.data, source=source)
        except StorageFull as exc:
            outcome.failed.append((*item, st.OUT_OF_RESOURCES, str(exc)))
            bound.error("instance_not_stored", reason=str(exc), **fields)
            continue
        except InvalidInput as exc:
            outcome.failed.append((*item, st.CANNOT_UNDERSTAND, str(exc)))
            bound.warning("stow_part_rejected", reason=str(exc), **fields)
            continue
        except OSError as exc:
            reason = f"storage error: {exc.strerror or exc}"
            outcome.failed.append((*item, st.OUT_OF_RESOURCES, reason))
            bound.error("instance_not_stored", reason=reason, **fields)
            continue
        outcome.stored.append(item)
        studies_of[header.sop_instance_uid] = header.study_uid
        if result.outcome is StoreOutcome.NEW_VERSION:
            bound.info("instance_new_version", version=result.version, **fields)
        if result.reopened_series:
            bound.info("series_reopened", series_uid=header.series_uid, **fields)
    per_study: dict[str, int] = {}
    for _sop_class, sop_instance in outcome.stored:
        study = studies_of.get(sop_instance, "")
        per_study[study] = per_study.get(study, 0) + 1
    for study, count in sorted(per_study.items()):
        audit(
            "instances_received",
            via="stow-rs",
            source=source,
            peer=peer,
            study_uid=study,
            instances=count,
        )
    bound.info(
        "stow_received",
        stored=len(outcome.stored),
        failed=len(outcome.failed),
        http_status=outcome.http_status,
    )
    return outcome
