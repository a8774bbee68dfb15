"""Quiet timers for series and studies, kept in the index so they survive restarts.

A series is complete once `series_quiet_seconds` pass without a new instance; a
study once `study_quiet_seconds` pass and none of its series is still receiving.
The timers are the `last_received_at` columns, not memory: a node restarted in the
middle of a study picks up where it was. An instance that arrives after completion
reopens its series (the store does that), so the work waits for the whole series
again instead of starting a second, partial unit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from node.store import CompletedUnit, InstanceIndex

log = structlog.get_logger("radnode.assembly")


class CompletionSweeper:
    """Marks quiet series and studies complete; run `sweep` periodically."""

    def __init__(
        self,
        index: InstanceIndex,
        series_quiet_seconds: float,
        study_quiet_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.series_quiet_seconds = series_quiet_seconds
        self.study_quiet_seconds = study_quiet_seconds
        self._clock = clock

    def sweep(self) -> tuple[list[CompletedUnit], list[CompletedUnit]]:
        """Complete what has been quiet long enough; return (series, studies) completed."""
        now = self._clock()
        done_series = self.index.complete_quiet_series(now - self.series_quiet_seconds, now)
        for unit in done_series:
            log.info(
                "series_complete",
                study_uid=unit.study_uid,
                series_uid=unit.series_uid,
                instances=unit.instance_count,
                generation=unit.generation,
            )
        done_studies = self.index.complete_quiet_studies(now - self.study_quiet_seconds, now)
        for unit in done_studies:
            log.info("study_complete", study_uid=unit.study_uid, instances=unit.instance_count)
        return done_series, done_studies

    @property
    def interval_seconds(self) -> float:
        """How often to sweep: often enough to be within a quarter of the shortest timer."""
        return max(0.05, min(1.0, self.series_quiet_seconds / 4))

    def run(self, stop: threading.Event) -> None:
        """Sweep until `stop` is set; errors are logged and the loop goes on."""
        while not stop.wait(self.interval_seconds):
            try:
                self.sweep()
            except Exception:
                log.exception("completion_sweep_failed")
