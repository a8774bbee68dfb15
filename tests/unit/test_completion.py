"""Completeness: quiet timers per series and study, persisted, reopened by late instances."""

from __future__ import annotations

from pathlib import Path

from node.assembly import CompletionSweeper
from node.store import InstanceIndex, InstanceStore, read_header
from node.synthetic import write_ct_series


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: Clock) -> tuple[InstanceStore, CompletionSweeper]:
    index = InstanceIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "root", index, reserve_bytes=0, clock=clock)
    return store, CompletionSweeper(index, 30, 120, clock=clock)


def receive(store: InstanceStore, files: list[Path]) -> None:
    for path in files:
        data = path.read_bytes()
        store.store_instance(read_header(data), data)


def test_a_series_completes_after_its_quiet_time_and_the_study_after_its_own(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store, sweeper = make(tmp_path, clock)
    series = write_ct_series(tmp_path / "ct", slices=4, rows=8, cols=8)
    receive(store, list(series.paths))

    clock.now += 29
    assert sweeper.sweep() == ([], []), "29 s of quiet is not yet 30"

    clock.now += 2
    done_series, done_studies = sweeper.sweep()
    assert [(u.series_uid, u.instance_count) for u in done_series] == [(series.series_uid, 4)]
    assert done_studies == []

    clock.now += 90
    _, done_studies = sweeper.sweep()
    assert [u.study_uid for u in done_studies] == [series.study_uid]
    kinds = [e["kind"] for e in store.index.events()]
    assert kinds == ["series_opened", "series_complete", "study_complete"]


def test_each_new_instance_restarts_the_series_timer(tmp_path: Path) -> None:
    clock = Clock()
    store, sweeper = make(tmp_path, clock)
    series = write_ct_series(tmp_path / "ct", slices=3, rows=8, cols=8)
    for path in series.paths:
        receive(store, [path])
        clock.now += 20
        assert sweeper.sweep() == ([], [])
    clock.now += 11
    assert len(sweeper.sweep()[0]) == 1


def test_a_late_instance_reopens_the_series_instead_of_making_a_second_unit(
    tmp_path: Path,
) -> None:
    # Given a complete series and study
    clock = Clock()
    store, sweeper = make(tmp_path, clock)
    series = write_ct_series(tmp_path / "ct", slices=3, rows=8, cols=8)
    receive(store, list(series.paths[:2]))
    clock.now += 200
    sweeper.sweep()
    # When the missing slice arrives late
    receive(store, [series.paths[2]])
    # Then the same series is receiving again, as its second generation
    [study] = store.index.list_studies()
    assert study.state == "receiving"
    [row] = study.series
    assert (row.state, row.generation, row.instance_count) == ("receiving", 2, 3)
    # And it completes once more, as one unit with all three instances
    clock.now += 31
    [unit] = sweeper.sweep()[0]
    assert (unit.instance_count, unit.generation) == (3, 2)
    kinds = [e["kind"] for e in store.index.events()]
    assert kinds.count("series_reopened") == 1 and kinds.count("study_reopened") == 1


def test_a_partial_series_survives_a_restart(tmp_path: Path) -> None:
    # Given half a series received before the node stopped
    clock = Clock()
    store, _ = make(tmp_path, clock)
    series = write_ct_series(tmp_path / "ct", slices=4, rows=8, cols=8)
    receive(store, list(series.paths[:2]))
    store.index.close()
    # When the node starts again and the rest arrives
    store, sweeper = make(tmp_path, clock)
    clock.now += 10
    receive(store, list(series.paths[2:]))
    # Then it is still one series, complete 30 s after its last instance
    clock.now += 25
    assert sweeper.sweep() == ([], [])
    clock.now += 6
    [unit] = sweeper.sweep()[0]
    assert unit.instance_count == 4 and unit.generation == 1
