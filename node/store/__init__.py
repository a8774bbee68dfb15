"""Instances on disk (atomic, durable) and the SQL index over them."""

from node.store.deliveries import DeliveryQueue, delivery_id_for
from node.store.header import check_uid, read_header
from node.store.index import (
    CompletedUnit,
    InstanceIndex,
    ReceivingSeries,
    SeriesSummary,
    StudySummary,
)
from node.store.instances import InstanceStore, ReindexReport
from node.store.jobs import JobQueue, job_id_for

__all__ = [
    "CompletedUnit",
    "DeliveryQueue",
    "InstanceIndex",
    "InstanceStore",
    "JobQueue",
    "ReceivingSeries",
    "ReindexReport",
    "SeriesSummary",
    "StudySummary",
    "check_uid",
    "delivery_id_for",
    "job_id_for",
    "read_header",
]
