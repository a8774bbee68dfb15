"""Prometheus metrics, read from the index at each scrape.

The index is the truth for every process of the node (listeners, workers, the
exporter), so the metrics read it rather than counting in one process: instances
per source, jobs per state, deliveries per destination and state. Stage durations
and delivery failures come from the event log, which the collector follows from
where it stopped; they count from the node's first day, as Prometheus counters
should. No label ever carries patient data: sources, states, destinations, stages.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from node.store import DeliveryQueue, InstanceIndex

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a quick delivery to a slow model on a CPU.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_FOLLOWED = ("job_inferred", "job_encoded", "delivered", "delivery_retry", "delivery_failed")


class _Histogram:
    """Cumulative bucket counts and the sum, for one label value."""

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1

    def buckets(self) -> list[tuple[str, float]]:
        pairs = [(f"{b:g}", float(c)) for b, c in zip(BUCKETS, self.counts, strict=True)]
        return [*pairs, ("+Inf", float(self.total))]


class NodeCollector(Collector):
    """Collects the node's metrics from the index when Prometheus scrapes."""

    def __init__(
        self,
        index: InstanceIndex,
        root: Path,
        associations: Callable[[], int] = lambda: 0,
    ) -> None:
        self.index = index
        self.root = root
        self.associations = associations
        self._lock = threading.Lock()
        self._cursor = 0
        self._stages: dict[str, _Histogram] = {}
        self._delivery_failures: dict[str, int] = {}

    def _follow_events(self) -> None:
        """Fold the events logged since the last scrape into the histograms."""
        while batch := self.index.events_after(self._cursor, _FOLLOWED):
            for event in batch:
                self._cursor = int(event["id"])
                detail = event["detail"] or {}
                kind = event["kind"]
                if kind == "job_inferred":
                    for stage, seconds in (detail.get("timings") or {}).items():
                        self._observe(f"inference_{stage}", seconds)
                elif kind == "job_encoded" and "encode_seconds" in detail:
                    self._observe("encode", detail["encode_seconds"])
                elif kind == "delivered" and "seconds" in detail:
                    self._observe("delivery", detail["seconds"])
                elif kind in ("delivery_retry", "delivery_failed"):
                    name = str(detail.get("destination", ""))
                    self._delivery_failures[name] = self._delivery_failures.get(name, 0) + 1

    def _observe(self, stage: str, seconds: object) -> None:
        if isinstance(seconds, int | float):
            self._stages.setdefault(stage, _Histogram()).observe(float(seconds))

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now."""
        with self._lock:
            self._follow_events()
            instances = CounterMetricFamily(
                "radnode_instances_received",
                "Instances stored, by the source that sent them",
                labels=["source"],
            )
            for source, count in sorted(self.index.counts("instances.source").items()):
                instances.add_metric([source or "unknown"], count)
            yield instances
            jobs = GaugeMetricFamily("radnode_jobs", "Jobs in each state", labels=["state"])
            for state, count in sorted(self.index.counts("jobs.state").items()):
                jobs.add_metric([state], count)
            yield jobs
            deliveries = GaugeMetricFamily(
                "radnode_deliveries",
                "Deliveries by destination and state",
                labels=["destination", "state"],
            )
            for (destination, state), count in sorted(DeliveryQueue(self.index).counts().items()):
                deliveries.add_metric([destination, state], count)
            yield deliveries
            failures = CounterMetricFamily(
                "radnode_delivery_failures",
                "Failed delivery attempts, by destination",
                labels=["destination"],
            )
            for destination, count in sorted(self._delivery_failures.items()):
                failures.add_metric([destination], count)
            yield failures
            stages = HistogramMetricFamily(
                "radnode_stage_seconds",
                "Time spent in each stage of a job",
                labels=["stage"],
            )
            for stage, histogram in sorted(self._stages.items()):
                stages.add_metric([stage], histogram.buckets(), histogram.sum)
            yield stages
        open_now = GaugeMetricFamily(
            "radnode_associations_open", "DICOM associations open now, over all listeners"
        )
        open_now.add_metric([], self.associations())
        yield open_now
        disk = GaugeMetricFamily(
            "radnode_storage_free_bytes", "Free space on the storage root's file system"
        )
        disk.add_metric([], shutil.disk_usage(self.root).free)
        yield disk


def render(collector: NodeCollector) -> bytes:
    """The metrics in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
