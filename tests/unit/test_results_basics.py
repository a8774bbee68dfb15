"""Deterministic result UIDs, series numbers and the Fleischner 2017 table."""

from __future__ import annotations

import re

import pytest
from pydicom.uid import UID

from node.domain import Finding
from node.results.context import series_number_for
from node.results.fleischner import fleischner_2017, nodule_size_mm, size_band
from node.results.uids import result_uid


def finding(long_mm: float, short_mm: float, tid: str = "nodule-1") -> Finding:
    point = (0.0, 0.0, 0.0)
    return Finding(
        label="Nodule", tracking_id=tid, centroid_mm=point, volume_mm3=100.0,
        long_axis_mm=long_mm, short_axis_mm=short_mm, mean_hu=20.0, score=0.9, key_slice=0,
        key_sop_instance_uid="1.2.3", long_axis_endpoints_mm=(point, point),
        short_axis_endpoints_mm=(point, point), voxel_count=10, extent_slices=(0, 0),
    )  # fmt: skip


def test_result_uids_are_valid_deterministic_and_distinct() -> None:
    a = result_uid("job-1", "1.0.0", "seg-instance")
    assert a == result_uid("job-1", "1.0.0", "seg-instance"), "the same job gives the same UID"
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", a) and len(a) <= 64 and UID(a).is_valid
    others = {
        result_uid("job-2", "1.0.0", "seg-instance"),
        result_uid("job-1", "1.0.1", "seg-instance"),
        result_uid("job-1", "1.0.0", "sr-instance"),
        result_uid("job-1", "1.0.0", "seg-instance", 1),
    }
    assert a not in others and len(others) == 4


def test_series_numbers_skip_those_the_study_uses_and_stay_stable() -> None:
    assert [series_number_for(k, {1, 2}) for k in ("seg", "sr", "sc", "kos", "pdf")] == [
        9001, 9002, 9003, 9004, 9005,
    ]  # fmt: skip
    # Given a study that already uses 9001 and 9003 (an earlier AI, say)
    numbers = [series_number_for(k, {9001, 9003}) for k in ("seg", "sr", "sc", "kos", "pdf")]
    assert numbers == [9002, 9004, 9005, 9006, 9007]
    with pytest.raises(ValueError, match="unknown output kind"):
        series_number_for("gsps", set())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("long_mm", "short_mm", "size", "band"),
    [
        (5.0, 4.0, 5, "<6"),  # 4.5 rounds up to 5
        (6.4, 4.6, 6, "6-8"),  # 5.5 rounds up to 6: the guideline rounds to the nearest mm
        (8.4, 8.4, 8, "6-8"),
        (9.0, 8.0, 9, ">8"),  # 8.5 rounds up to 9
        (30.1, 24.7, 27, ">8"),
    ],
)
def test_size_is_the_rounded_mean_of_the_axes(
    long_mm: float, short_mm: float, size: int, band: str
) -> None:
    assert nodule_size_mm(finding(long_mm, short_mm)) == size
    assert size_band(size) == band


def test_a_single_large_nodule_gets_the_guideline_rows_for_both_risks() -> None:
    rec = fleischner_2017([finding(30.1, 24.7)])
    assert rec is not None
    assert (rec.nodules, rec.size_band, rec.size_mm) == ("single", ">8", 27)
    assert rec.low_risk == rec.high_risk == "Consider CT at 3 months, PET/CT, or tissue sampling."
    assert "Reference only" in rec.text() and "screening" in rec.text()


def test_several_nodules_are_managed_by_the_largest() -> None:
    rec = fleischner_2017([finding(4.0, 4.0, "nodule-1"), finding(7.0, 7.0, "nodule-2")])
    assert rec is not None
    assert (rec.nodules, rec.size_band, rec.guiding_tracking_id) == ("multiple", "6-8", "nodule-2")
    assert rec.low_risk == "CT at 3-6 months, then consider CT at 18-24 months."
    assert rec.high_risk == "CT at 3-6 months, then CT at 18-24 months."
    small = fleischner_2017([finding(4.0, 3.0)])
    assert small is not None
    assert (small.low_risk, small.high_risk) == (
        "No routine follow-up.", "Optional CT at 12 months.",
    )  # fmt: skip


def test_no_nodules_no_recommendation() -> None:
    assert fleischner_2017([]) is None
