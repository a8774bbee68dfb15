"""Domain types: what an instance, a series, a study and a job are to Radnode."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SeriesState(enum.StrEnum):
    """Where a series stands in assembly."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class StudyState(enum.StrEnum):
    """Where a study stands in assembly."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class JobState(enum.StrEnum):
    """The life of a job; `failed` is retryable, `rejected` is bad input and final."""

    PENDING = "pending"
    RUNNING = "running"
    ENCODED = "encoded"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"
    REJECTED = "rejected"


class StoreOutcome(enum.StrEnum):
    """What storing a received instance did."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    NEW_VERSION = "new_version"


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The attributes Radnode reads from a received instance without decoding its pixels.

    Patient attributes are kept for the index (so `radnode studies --show-phi` can show
    them) but are excluded from `repr` so that they never reach a log by accident.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part: str = ""
    study_date: str = ""
    study_description: str = ""
    patient_name: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The outcome of storing one instance, with the version now on disk."""

    outcome: StoreOutcome
    version: int
    relpath: str
    size: int
    reopened_series: bool = False


@dataclass(frozen=True, slots=True)
class AssociationInfo:
    """Who is on the other end of a DICOM association; safe to log."""

    id: str
    calling_ae: str
    called_ae: str
    address: str
    port: int
    source: str | None = None

    def log_fields(self) -> dict[str, object]:
        """Fields every log event on this association carries."""
        return {
            "assoc_id": self.id,
            "calling_ae": self.calling_ae,
            "peer": f"{self.address}:{self.port}",
            **({"source": self.source} if self.source else {}),
        }
