"""Plain, frozen types shared by the stages; no I/O here."""

from node.domain.types import (
    AssociationInfo,
    InstanceHeader,
    JobState,
    SeriesState,
    StoreOutcome,
    StoreResult,
    StudyState,
)

__all__ = [
    "AssociationInfo",
    "InstanceHeader",
    "JobState",
    "SeriesState",
    "StoreOutcome",
    "StoreResult",
    "StudyState",
]
