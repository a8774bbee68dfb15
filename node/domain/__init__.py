"""Plain, frozen types shared by the stages; no I/O here."""

from node.domain.types import (
    AssociationInfo,
    Finding,
    InstanceHeader,
    Job,
    JobState,
    RouteMatch,
    SeriesFacts,
    SeriesState,
    StoreOutcome,
    StoreResult,
    StudyState,
)

__all__ = [
    "AssociationInfo",
    "Finding",
    "InstanceHeader",
    "Job",
    "JobState",
    "RouteMatch",
    "SeriesFacts",
    "SeriesState",
    "StoreOutcome",
    "StoreResult",
    "StudyState",
]
