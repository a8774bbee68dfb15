"""Completeness beyond timers: ask the sender how many instances a series has.

For a source IT configured with a `completeness_query` (a PACS that answers
C-FIND), a series is complete as soon as the node holds as many instances as the
PACS reports, instead of after the quiet timer. The question goes out once when a
series starts, then again every `interval_seconds` while the series is short (the
PACS may itself still be receiving it). A source that cannot answer changes
nothing: the quiet timer completes the series as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import structlog

from node.store import CompletedUnit, InstanceIndex

log = structlog.get_logger("radnode.assembly")

# (source name, study UID, series UID) -> the number of instances, or None: unknown
InstanceCounter = Callable[[str, str, str], int | None]
CHECK_SECONDS = 0.25


class CountedCompletion:
    """Completes series whose instance count reached what their sender reported."""

    def __init__(
        self,
        index: InstanceIndex,
        counter: InstanceCounter,
        intervals: Mapping[str, float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.counter = counter
        self.intervals = dict(intervals)  # source name -> seconds between questions
        self._clock = clock
        self._answers: dict[tuple[str, int], tuple[int | None, float]] = {}

    def check(self) -> list[CompletedUnit]:
        """Ask where due, complete what is counted; return the series completed."""
        done: list[CompletedUnit] = []
        receiving = self.index.receiving_series(list(self.intervals))
        for item in receiving:
            key = (item.series_uid, item.generation)
            answer = self._answers.get(key)
            now = self._clock()
            short = answer is None or answer[0] is None or item.instance_count < answer[0]
            if answer is None or (short and now - answer[1] >= self.intervals[item.source]):
                expected = self.counter(item.source, item.study_uid, item.series_uid)
                answer = (expected, now)
                self._answers[key] = answer
                log.debug(
                    "series_count_asked",
                    source=item.source,
                    series_uid=item.series_uid,
                    expected=expected,
                    here=item.instance_count,
                )
            expected = answer[0]
            if expected is None or expected <= 0 or item.instance_count < expected:
                continue
            unit = self.index.complete_counted_series(
                item.series_uid, item.generation, expected, self._clock()
            )
            if unit is not None:
                log.info(
                    "series_complete",
                    study_uid=unit.study_uid,
                    series_uid=unit.series_uid,
                    instances=unit.instance_count,
                    generation=unit.generation,
                    by="c-find",
                    expected=expected,
                )
                done.append(unit)
        still = {(item.series_uid, item.generation) for item in receiving}
        for key in [k for k in self._answers if k not in still]:
            del self._answers[key]
        return done

    def run(self, stop: threading.Event) -> None:
        """Check until `stop` is set; errors are logged and the loop goes on."""
        while not stop.wait(CHECK_SECONDS):
            try:
                self.check()
            except Exception:
                log.exception("counted_completion_failed")
