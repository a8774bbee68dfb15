"""Plain, frozen types shared by the stages; no I/O here."""

from node.domain.types import (
    AssociationInfo,
    CodedConcept,
    Delivery,
    DeliveryState,
    Finding,
    InstanceHeader,
    Job,
    JobState,
    ModelInfo,
    RouteMatch,
    SegmentSpec,
    SeriesFacts,
    SeriesState,
    StoreOutcome,
    StoreResult,
    StudyState,
)

__all__ = [
    "AssociationInfo",
    "CodedConcept",
    "Delivery",
    "DeliveryState",
    "Finding",
    "InstanceHeader",
    "Job",
    "JobState",
    "ModelInfo",
    "RouteMatch",
    "SegmentSpec",
    "SeriesFacts",
    "SeriesState",
    "StoreOutcome",
    "StoreResult",
    "StudyState",
]
