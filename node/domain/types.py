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


class DeliveryState(enum.StrEnum):
    """One job's results on their way to one destination; `failed` is the dead letter."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


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


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What routing rules look at: a complete series, from the index and one header.

    `slice_thickness_mm` and `image_type` come from a representative instance;
    they are None or empty when the header does not carry them.
    """

    study_uid: str
    series_uid: str
    generation: int
    source: str | None
    modality: str
    body_part: str
    series_description: str
    instance_count: int
    slice_thickness_mm: float | None = None
    image_type: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A route chosen for a series: the job to create."""

    route: str
    model: str
    priority: int
    send_to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of work: one model on one generation of one series."""

    id: str
    study_uid: str
    series_uid: str
    generation: int
    route: str
    model: str
    state: JobState
    priority: int
    attempts: int
    send_to: tuple[str, ...] = ()
    reason: str | None = None
    result_relpath: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """A job's results for one destination: what was confirmed, what went wrong."""

    id: str
    job_id: str
    study_uid: str
    series_uid: str
    destination: str
    state: DeliveryState
    attempts: int
    due_at: float
    reason: str | None = None
    confirmed: frozenset[str] = frozenset()
    result_relpath: str | None = None
    created_at: float = 0.0
    started_at: float = 0.0
    updated_at: float = 0.0
    delivered_at: float | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a model found, measured in patient space; free of patient data.

    `centroid_mm` is (x, y, z) in DICOM patient coordinates; the key slice is the
    index of the source slice where the long axis was measured, and `long_axis_mm`
    and `short_axis_mm` are the end points on it (patient coordinates).
    """

    label: str
    tracking_id: str
    centroid_mm: tuple[float, float, float]
    volume_mm3: float
    long_axis_mm: float
    short_axis_mm: float
    mean_hu: float
    score: float
    key_slice: int
    key_sop_instance_uid: str
    long_axis_endpoints_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    short_axis_endpoints_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    voxel_count: int
    extent_slices: tuple[int, int]
    attributes: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        """The finding as findings.json writes it."""
        return {
            "label": self.label,
            "tracking_id": self.tracking_id,
            "centroid_mm": [round(v, 2) for v in self.centroid_mm],
            "volume_mm3": round(self.volume_mm3, 1),
            "long_axis_mm": round(self.long_axis_mm, 2),
            "short_axis_mm": round(self.short_axis_mm, 2),
            "mean_hu": round(self.mean_hu, 1),
            "score": round(self.score, 3),
            "key_slice": self.key_slice,
            "key_sop_instance_uid": self.key_sop_instance_uid,
            "long_axis_endpoints_mm": [
                [round(v, 2) for v in p] for p in self.long_axis_endpoints_mm
            ],
            "short_axis_endpoints_mm": [
                [round(v, 2) for v in p] for p in self.short_axis_endpoints_mm
            ],
            "voxel_count": self.voxel_count,
            "extent_slices": list(self.extent_slices),
            "attributes": {k: round(v, 4) for k, v in self.attributes.items()},
        }


@dataclass(frozen=True, slots=True)
class CodedConcept:
    """A coded concept as DICOM writes it: value, coding scheme, meaning."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """A segment a model outputs, coded for SEG and SR."""

    label: str
    category: CodedConcept
    type: CodedConcept
    anatomic_region: CodedConcept | None = None
    color_rgb: tuple[int, int, int] = (255, 0, 0)
    finding: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What results say about the model that made them (provenance, codes)."""

    name: str
    version: str
    device_uid: str
    description: str
    segments: tuple[SegmentSpec, ...]
    finding_type: CodedConcept | None = None
    manufacturer: str = "Radnode"
    not_for_clinical_use: bool = True

    @property
    def finding_segment(self) -> SegmentSpec:
        """The segment each finding is encoded as."""
        return next(s for s in self.segments if s.finding)
