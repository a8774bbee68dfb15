"""The job queue: routed series become jobs once, workers lease them, leases expire,
a changed series supersedes its waiting jobs, and every step leaves an event."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from node.domain import InstanceHeader, Job, JobState, RouteMatch, SeriesFacts
from node.store import InstanceIndex, JobQueue, job_id_for
from node.store.files import instance_relpath

STUDY = "1.2.826.0.1.3680043.8.498.100"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
LUNGS = RouteMatch("chest", "lung-nodules", 5, ("pacs-a",))
LEASE = 300.0


@pytest.fixture
def index(tmp_path: Path) -> InstanceIndex:
    return InstanceIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}")


@pytest.fixture
def queue(index: InstanceIndex) -> JobQueue:
    return JobQueue(index)


def receive(index: InstanceIndex, series_uid: str, count: int, now: float, first: int = 1) -> None:
    """Index `count` new CT instances of a series, as the store does after writing them."""
    for number in range(first, first + count):
        header = InstanceHeader(
            study_uid=STUDY,
            series_uid=series_uid,
            sop_instance_uid=f"{series_uid}.{number}",
            sop_class_uid=CT_IMAGE_STORAGE,
            transfer_syntax_uid=EXPLICIT_LE,
            modality="CT",
            series_description="Thorax",
            body_part="CHEST",
        )
        index.record_instance(
            header,
            relpath=instance_relpath(STUDY, series_uid, header.sop_instance_uid),
            size=1000,
            sha256=hashlib.sha256(header.sop_instance_uid.encode()).hexdigest(),
            source="pacs",
            calling_ae="PACS1",
            now=now,
        )


def complete_series(index: InstanceIndex, series_uid: str, now: float) -> SeriesFacts:
    """Receive a 3-slice series at `now` and complete it 60 s later; its facts."""
    receive(index, series_uid, 3, now)
    index.complete_quiet_series(quiet_before=now, now=now + 60)
    return facts_of(index, series_uid)


def facts_of(index: InstanceIndex, series_uid: str) -> SeriesFacts:
    found = JobQueue(index).series_facts(series_uid)
    assert found is not None
    return found[0]


def one_job(queue: JobQueue, facts: SeriesFacts, now: float, match: RouteMatch = LUNGS) -> Job:
    [job] = queue.record_routing(facts, [match], now)
    return job


# -- routing -----------------------------------------------------------------------


def test_series_to_route_lists_complete_series_not_yet_routed(
    index: InstanceIndex, queue: JobQueue
) -> None:
    # Given two series that went quiet and one still receiving
    receive(index, "1.2.3.1", 3, now=100)
    receive(index, "1.2.3.2", 3, now=100)
    receive(index, "1.2.3.3", 3, now=150)
    index.complete_quiet_series(quiet_before=120, now=200)
    # Then only the two complete ones wait for routing, at their first generation
    assert sorted(queue.series_to_route()) == [("1.2.3.1", 1), ("1.2.3.2", 1)]
    # And once one is routed, only the other waits
    queue.record_routing(facts_of(index, "1.2.3.1"), [LUNGS], now=210)
    assert queue.series_to_route() == [("1.2.3.2", 1)]


def test_series_facts_come_from_the_index(index: InstanceIndex, queue: JobQueue) -> None:
    facts = complete_series(index, "1.2.3.1", now=100)
    assert (facts.study_uid, facts.source, facts.modality, facts.body_part) == (
        STUDY,
        "pacs",
        "CT",
        "CHEST",
    )
    assert (facts.generation, facts.instance_count) == (1, 3)


def test_routing_creates_each_job_once_with_a_deterministic_id(
    index: InstanceIndex, queue: JobQueue
) -> None:
    facts = complete_series(index, "1.2.3.1", now=100)
    other = RouteMatch("research", "emphysema", 0, ())
    created = queue.record_routing(facts, [LUNGS, other], now=200)
    assert {j.id for j in created} == {
        job_id_for("1.2.3.1", 1, "lung-nodules"),
        job_id_for("1.2.3.1", 1, "emphysema"),
    }
    assert job_id_for("1.2.3.1", 1, "lung-nodules") != job_id_for("1.2.3.1", 2, "lung-nodules")
    [lungs] = [j for j in created if j.model == "lung-nodules"]
    assert (lungs.state, lungs.route, lungs.priority, lungs.attempts) == (
        JobState.PENDING,
        "chest",
        5,
        0,
    )
    assert lungs.send_to == ("pacs-a",) and lungs.created_at == 200
    # When routing runs again for the same generation (a crash before it was recorded)
    assert queue.record_routing(facts, [LUNGS, other], now=300) == []
    # Then nothing new exists
    assert len(queue.recent()) == 2
    assert len(index.events("job_created")) == 2
    assert len(index.events("series_routed")) == 1


def test_a_series_no_route_takes_is_routed_with_the_reasons(
    index: InstanceIndex, queue: JobQueue
) -> None:
    facts = complete_series(index, "1.2.3.1", now=100)
    reasons = {"chest": "Modality CT is not in ['MR']"}
    assert queue.record_routing(facts, [], now=200, unmatched=reasons) == []
    assert queue.series_to_route() == [], "it is not routed again"
    assert queue.recent() == []
    [event] = index.events("series_routed")
    assert event["series_uid"] == "1.2.3.1"
    assert event["detail"] == {"generation": 1, "routes": [], "not_matched": reasons}


# -- claiming and leases -----------------------------------------------------------


def test_claim_takes_the_highest_priority_then_the_oldest(
    index: InstanceIndex, queue: JobQueue
) -> None:
    old_low = one_job(queue, complete_series(index, "1.2.3.1", 100), 200, LUNGS)
    new_high = one_job(
        queue, complete_series(index, "1.2.3.2", 100), 300, RouteMatch("urgent", "m", 9, ())
    )
    old_high = one_job(
        queue, complete_series(index, "1.2.3.3", 100), 250, RouteMatch("urgent", "m", 9, ())
    )
    order = [queue.claim("w1", LEASE, now=400, max_attempts=3) for _ in range(4)]
    assert [j.id if j else None for j in order] == [old_high.id, new_high.id, old_low.id, None]


def test_a_claimed_job_runs_under_a_lease_and_is_not_claimed_twice(
    index: InstanceIndex, queue: JobQueue
) -> None:
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    claimed = queue.claim("w1", LEASE, now=1000, max_attempts=3)
    assert claimed is not None and claimed.id == job.id
    assert (claimed.state, claimed.attempts) == (JobState.RUNNING, 1)
    assert queue.claim("w2", LEASE, now=1000 + LEASE - 1, max_attempts=3) is None


def test_an_expired_lease_lets_another_worker_claim_the_job_again(
    index: InstanceIndex, queue: JobQueue
) -> None:
    # Given a job whose worker died after claiming it
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    queue.claim("w1", LEASE, now=1000, max_attempts=3)
    # When its lease has run out
    again = queue.claim("w2", LEASE, now=1000 + LEASE + 1, max_attempts=3)
    # Then the next worker gets it, on its second attempt, and the event says why
    assert again is not None and again.id == job.id
    assert (again.state, again.attempts) == (JobState.RUNNING, 2)
    claims = [e["detail"] for e in index.events("job_claimed")]
    assert claims == [
        {"worker": "w1", "attempt": 1, "lease_expired": False},
        {"worker": "w2", "attempt": 2, "lease_expired": True},
    ]
    assert not queue.renew(job.id, "w1", LEASE, now=1400), "the first worker lost the lease"


def test_a_job_whose_leases_keep_expiring_fails_after_max_attempts(
    index: InstanceIndex, queue: JobQueue
) -> None:
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    now = 1000.0
    for attempt in (1, 2):
        claimed = queue.claim(f"w{attempt}", LEASE, now=now, max_attempts=2)
        assert claimed is not None and claimed.attempts == attempt
        now += LEASE + 1
    # The second lease has expired too, and attempts reached max_attempts
    assert queue.claim("w3", LEASE, now=now, max_attempts=2) is None
    failed = queue.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.reason is not None and "lease" in failed.reason
    [event] = index.events("job_failed")
    assert event["job_id"] == job.id and "lease" in event["detail"]["reason"]


def test_renew_extends_the_lease_for_its_owner_only(index: InstanceIndex, queue: JobQueue) -> None:
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    queue.claim("w1", LEASE, now=1000, max_attempts=3)
    assert not queue.renew(job.id, "w2", LEASE, now=1200)
    assert queue.renew(job.id, "w1", LEASE, now=1200)
    assert queue.claim("w2", LEASE, now=1000 + LEASE + 1, max_attempts=3) is None, "renewed"
    assert queue.claim("w2", LEASE, now=1200 + LEASE + 1, max_attempts=3) is not None


def test_finish_refuses_a_worker_that_does_not_hold_the_lease(
    index: InstanceIndex, queue: JobQueue
) -> None:
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    assert not queue.finish(job.id, "w1", JobState.ENCODED, now=300), "not claimed yet"
    queue.claim("w1", LEASE, now=1000, max_attempts=3)
    assert not queue.finish(job.id, "w2", JobState.ENCODED, now=1100)
    still = queue.get(job.id)
    assert still is not None and still.state is JobState.RUNNING


def test_finish_as_encoded_records_where_the_result_is(
    index: InstanceIndex, queue: JobQueue
) -> None:
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    queue.claim("w1", LEASE, now=1000, max_attempts=3)
    assert queue.finish(
        job.id,
        "w1",
        JobState.ENCODED,
        now=1100,
        result_relpath=f"results/{job.id}",
        detail={"findings": 2},
    )
    done = queue.get(job.id)
    assert done is not None
    assert (done.state, done.result_relpath, done.updated_at) == (
        JobState.ENCODED,
        f"results/{job.id}",
        1100,
    )
    [event] = index.events("job_encoded")
    assert event["detail"] == {"findings": 2, "reason": None}
    assert not queue.finish(job.id, "w1", JobState.ENCODED, now=1200), "finished once only"
    assert queue.claim("w2", LEASE, now=5000, max_attempts=3) is None, "an encoded job stays"


def test_release_for_retry_returns_the_job_to_pending(
    index: InstanceIndex, queue: JobQueue
) -> None:
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    queue.claim("w1", LEASE, now=1000, max_attempts=3)
    assert not queue.release_for_retry(job.id, "w2", "not mine", now=1050)
    assert queue.release_for_retry(job.id, "w1", "disk busy", now=1100)
    waiting = queue.get(job.id)
    assert waiting is not None
    assert (waiting.state, waiting.reason, waiting.attempts) == (JobState.PENDING, "disk busy", 1)
    again = queue.claim("w2", LEASE, now=1101, max_attempts=3)
    assert again is not None and again.attempts == 2


# -- a series that changes ---------------------------------------------------------


def test_a_reopened_series_supersedes_its_waiting_job_and_gets_a_new_one(
    index: InstanceIndex, queue: JobQueue
) -> None:
    # Given a routed series whose job is still waiting
    old = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    # When a late instance reopens the series and it completes again
    receive(index, "1.2.3.1", 1, now=300, first=4)
    assert queue.series_to_route() == [], "a receiving series is not routed"
    index.complete_quiet_series(quiet_before=300, now=400)
    assert queue.series_to_route() == [("1.2.3.1", 2)]
    facts = facts_of(index, "1.2.3.1")
    assert (facts.generation, facts.instance_count) == (2, 4)
    [new] = queue.record_routing(facts, [LUNGS], now=500)
    # Then the waiting job is rejected as superseded and a job for generation 2 exists
    superseded = queue.get(old.id)
    assert superseded is not None and superseded.state is JobState.REJECTED
    assert superseded.reason is not None and superseded.reason.startswith("superseded")
    assert new.id == job_id_for("1.2.3.1", 2, "lung-nodules") != old.id
    assert (new.generation, new.state) == (2, JobState.PENDING)
    assert [e["job_id"] for e in index.events("job_superseded")] == [old.id]
    claimed = queue.claim("w1", LEASE, now=600, max_attempts=3)
    assert claimed is not None and claimed.id == new.id


def test_a_running_job_of_an_older_generation_is_left_to_finish(
    index: InstanceIndex, queue: JobQueue
) -> None:
    old = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    queue.claim("w1", LEASE, now=250, max_attempts=3)
    receive(index, "1.2.3.1", 1, now=300, first=4)
    index.complete_quiet_series(quiet_before=300, now=400)
    queue.record_routing(facts_of(index, "1.2.3.1"), [LUNGS], now=500)
    running = queue.get(old.id)
    assert running is not None and running.state is JobState.RUNNING


# -- listings ----------------------------------------------------------------------


def test_timeline_tells_the_series_and_the_job_in_order(
    index: InstanceIndex, queue: JobQueue
) -> None:
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    other = one_job(queue, complete_series(index, "1.2.3.2", 100), 200)
    queue.claim("w1", LEASE, now=1000, max_attempts=3)
    queue.finish(job.id, "w1", JobState.ENCODED, now=1100, result_relpath="results/x")
    timeline = queue.timeline(job.id)
    assert [e["kind"] for e in timeline] == [
        "first_instance_received",
        "last_instance_received",
        "series_opened",
        "series_complete",
        "job_created",
        "series_routed",
        "job_claimed",
        "job_encoded",
    ]
    assert {e["series_uid"] for e in timeline} == {"1.2.3.1"}
    assert [e["at"] for e in timeline] == sorted(e["at"] for e in timeline)
    assert all(e["job_id"] in (None, job.id) for e in timeline)
    assert other.id not in {e["job_id"] for e in timeline}
    assert queue.timeline("no-such-job") == []


def test_get_accepts_an_unambiguous_prefix_of_eight_characters(
    index: InstanceIndex, queue: JobQueue
) -> None:
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    found = queue.get(job.id[:8])
    assert found is not None and found.id == job.id
    assert queue.get(job.id) == found
    assert queue.get(job.id[:7]) is None, "shorter prefixes are not looked up"
    assert queue.get("ffffffff-no-such-job") is None


# -- races and edge cases -------------------------------------------------------------


def test_a_series_reopened_while_routing_runs_is_routed_when_it_completes_again(
    index: InstanceIndex, queue: JobQueue
) -> None:
    # Given a complete series that the router has just listed
    complete_series(index, "1.2.3.1", now=100)
    assert queue.series_to_route() == [("1.2.3.1", 1)]
    # When a late instance (another listener process) reopens it before it is routed
    receive(index, "1.2.3.1", 1, now=300, first=4)
    created = queue.record_routing(facts_of(index, "1.2.3.1"), [LUNGS], now=310)
    # Then no job runs on a series that is still receiving
    assert created == []
    # And once it completes again, its new generation is routed
    index.complete_quiet_series(quiet_before=300, now=400)
    assert queue.series_to_route() == [("1.2.3.1", 2)]


def test_the_timeline_of_a_later_generation_says_the_series_was_reopened(
    index: InstanceIndex, queue: JobQueue
) -> None:
    one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    receive(index, "1.2.3.1", 1, now=300, first=4)
    index.complete_quiet_series(quiet_before=300, now=400)
    [new] = queue.record_routing(facts_of(index, "1.2.3.1"), [LUNGS], now=500)
    kinds = [e["kind"] for e in queue.timeline(new.id)]
    assert kinds == [
        "first_instance_received",
        "series_opened",
        "series_complete",
        "series_routed",
        "last_instance_received",
        "series_reopened",
        "series_complete",
        "job_created",
        "series_routed",
    ]


def test_get_takes_the_prefix_literally(index: InstanceIndex, queue: JobQueue) -> None:
    one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    assert queue.get("%" * 8) is None
    assert queue.get("_" * 8) is None


def test_a_waiting_job_is_not_run_while_its_series_receives_again(
    index: InstanceIndex, queue: JobQueue
) -> None:
    # Given a routed series whose job waits, and a late instance that reopens the series
    one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    receive(index, "1.2.3.1", 1, now=300, first=4)
    # When a worker looks for work while the series is receiving
    # Then the old job is not handed out: it would run on a partial series
    assert queue.claim("w1", LEASE, now=310, max_attempts=3) is None


def test_a_job_given_back_waits_out_its_retry_delay(index: InstanceIndex, queue: JobQueue) -> None:
    # Given a job whose first attempt failed for a passing reason, with a 10 s delay
    job = one_job(queue, complete_series(index, "1.2.3.1", 100), 200)
    assert queue.claim("w1", LEASE, now=300, max_attempts=3) is not None
    assert queue.release_for_retry(job.id, "w1", "disk full", now=310, delay_seconds=10)
    # Then it is not claimed before the delay is over, and is claimed after it
    assert queue.claim("w1", LEASE, now=315, max_attempts=3) is None
    again = queue.claim("w1", LEASE, now=321, max_attempts=3)
    assert again is not None and (again.id, again.attempts) == (job.id, 2)
    [event] = index.events("job_retry")
    assert event["detail"]["delay_seconds"] == 10
