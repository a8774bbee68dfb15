"""Delivery against real peers: Orthanc (C-STORE and STOW-RS with its DICOMweb
plugin) and DCMTK storescp set up like an old archive that refuses SEG and SR and
takes secondary captures only as JPEG 2000. The exporter runs in the test process
on a real store; the job's results were encoded as a worker encodes them."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless
from sqlalchemy import update
from structlog.testing import capture_logs

from node.config import NodeConfig
from node.domain import DeliveryState, JobState
from node.export import Exporter
from node.store import DeliveryQueue, InstanceStore, JobQueue
from node.store.schema import deliveries
from tests.delivery_helpers import Clock, EncodedJob, encoded_job, make_store
from tests.helpers import dcmtk, dcmtk_env, free_port, run_tool
from tests.orthanc import Orthanc

ALL = {"seg", "sr", "sc", "kos", "pdf"}


def config_with(tmp_path: Path, *destinations: dict[str, Any], **delivery: Any) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "storage": {"root": str(tmp_path / "store"), "min_free_mb": 0},
            "destinations": list(destinations),
            "delivery": {"retry_base_seconds": 1, "retry_max_seconds": 4, **delivery},
        }
    )


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True, users={"radnode": "s3cret"}).start()
    yield pacs
    pacs.stop()


def dimse_destination(pacs: Orthanc, name: str = "pacs") -> dict[str, Any]:
    return {"name": name, "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}


def result_instances(pacs: Orthanc, job: EncodedJob) -> dict[str, dict[str, Any]]:
    """The study's instances in the PACS that are results, by SOP instance UID."""
    wanted = job.sop_uids()
    return {
        i["SOPInstanceUID"]: i
        for i in pacs.instances_of_study(job.study_uid)
        if i["SOPInstanceUID"] in wanted
    }


def deliver(exporter: Exporter, name: str) -> DeliveryState | None:
    destination = exporter.config.destination(name)
    assert destination is not None
    exporter.open_deliveries()
    delivery = exporter.queue.claim(
        name, exporter.owner, exporter.lease_seconds(destination), exporter._clock()
    )
    assert delivery is not None, f"nothing due for {name}"
    return exporter.deliver(destination, delivery)


def test_results_reach_the_pacs_study_once_even_when_sent_again(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    # Given a job whose SEG, SR, key images, KOS and summary are encoded for the PACS,
    # and the source series in the PACS
    config = config_with(tmp_path, dimse_destination(orthanc))
    store = make_store(config)
    job = encoded_job(store, tmp_path / "ct", ("pacs",))
    orthanc.upload(job.source_files)
    exporter = Exporter(config, store.index, store.root)
    # When the exporter delivers it
    assert deliver(exporter, "pacs") is DeliveryState.DELIVERED
    # Then every result sits in the source study, with the UIDs the node gave them
    stored = result_instances(orthanc, job)
    assert set(stored) == job.sop_uids()
    assert {o.kind for o in job.outputs} == ALL
    for output in job.outputs:
        assert stored[str(output.dataset.SOPInstanceUID)]["SOPClassUID"] == str(
            output.dataset.SOPClassUID
        )
    # And the SEG in the PACS points at the source series
    seg = next(o for o in job.outputs if o.kind == "seg")
    data = orthanc.instance_file(stored[str(seg.dataset.SOPInstanceUID)]["ID"])
    seg_back = pydicom.dcmread(io.BytesIO(data))
    assert seg_back.ReferencedSeriesSequence[0].SeriesInstanceUID == job.source_series_uid
    # And the job is delivered, with the delivery in its timeline
    assert JobQueue(store.index).get(job.job.id).state is JobState.DELIVERED  # type: ignore[union-attr]
    kinds = [e["kind"] for e in JobQueue(store.index).timeline(job.job.id)]
    assert kinds[-3:] == ["job_delivering", "delivered", "job_delivered"]

    # When the node crashed before recording the delivery and sends everything again
    with store.index.write_transaction() as conn:
        conn.execute(
            update(deliveries).values(state=DeliveryState.PENDING, confirmed=None, due_at=0)
        )
    assert deliver(exporter, "pacs") is DeliveryState.DELIVERED
    # Then the PACS still holds exactly one copy of each result
    again = [
        i
        for i in orthanc.instances_of_study(job.study_uid)
        if i["SOPInstanceUID"] in job.sop_uids()
    ]
    assert len(again) == len(job.outputs)
    store.close()


def test_stow_rs_delivers_into_orthanc_dicomweb_with_basic_auth(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    # Given a STOW-RS destination with the right password, and one with a wrong one
    good = {"name": "web", "url": orthanc.dicomweb_url,
            "auth": {"type": "basic", "username": "radnode", "password": "s3cret"}}  # fmt: skip
    bad = {"name": "web-bad", "url": orthanc.dicomweb_url,
           "auth": {"type": "basic", "username": "radnode", "password": "wrong"}}  # fmt: skip
    config = config_with(tmp_path, good, bad)
    store = make_store(config)
    job = encoded_job(store, tmp_path / "ct", ("web", "web-bad"))
    exporter = Exporter(config, store.index, store.root)
    # When both are delivered once
    assert deliver(exporter, "web") is DeliveryState.DELIVERED
    with capture_logs() as logs:
        assert deliver(exporter, "web-bad") is DeliveryState.PENDING
    # Then the results are in Orthanc, through DICOMweb
    assert set(result_instances(orthanc, job)) == job.sop_uids()
    # And the wrong password is a retry with a reason IT can act on, in the log and
    # in the job, which stays delivering
    [retry] = [e for e in logs if e["event"] == "delivery_retry"]
    assert "HTTP 401" in retry["reason"] and "auth" in retry["reason"]
    assert "s3cret" not in str(logs) and "wrong" not in str(logs)
    [delivery] = [
        d for d in DeliveryQueue(store.index).for_job(job.job.id) if d.destination == "web-bad"
    ]
    assert delivery.state is DeliveryState.PENDING and "HTTP 401" in str(delivery.reason)
    assert JobQueue(store.index).get(job.job.id).state is JobState.DELIVERING  # type: ignore[union-attr]
    store.close()


STORESCP_PROFILE = """
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[J2KOnly]
TransferSyntax1 = JPEG2000LosslessOnly

[[PresentationContexts]]
[OldArchive]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = SecondaryCaptureImageStorage\\J2KOnly
PresentationContext3 = KeyObjectSelectionDocumentStorage\\Uncompressed
PresentationContext4 = EncapsulatedPDFStorage\\Uncompressed

[[Profiles]]
[OldArchive]
PresentationContexts = OldArchive
"""


@pytest.fixture
def old_archive(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp that knows neither SEG nor SR and takes SC as JPEG 2000 only."""
    profile = tmp_path / "storescp.cfg"
    profile.write_text(STORESCP_PROFILE)
    out = tmp_path / "archive"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "OLDARCH", "-xf", str(profile), "OldArchive",
         "-od", str(out), str(port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while run_tool([dcmtk("echoscu"), "-aec", "OLDARCH", "127.0.0.1", str(port)]).returncode:
        assert time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.2)
    yield port, out
    proc.terminate()
    proc.wait(10)


def test_an_archive_refusing_seg_and_sr_gets_the_fallbacks_with_sc_transcoded(
    tmp_path: Path, old_archive: tuple[int, Path]
) -> None:
    port, received = old_archive
    # Given a destination that wants SEG and SR, with key images, KOS and summary as
    # fallbacks, which accepts neither SEG nor SR and takes key images as JPEG 2000 only
    archive = {"name": "archive", "ae_title": "OLDARCH", "host": "127.0.0.1", "port": port,
               "outputs": ["seg", "sr"], "fallback_outputs": ["sc", "kos", "pdf"]}  # fmt: skip
    config = config_with(tmp_path, archive)
    store = make_store(config)
    job = encoded_job(store, tmp_path / "ct", ("archive",))
    exporter = Exporter(config, store.index, store.root)
    # When the results are delivered, and delivered again (a second job, say)
    with capture_logs() as logs:
        assert deliver(exporter, "archive") is DeliveryState.DELIVERED
        with store.index.write_transaction() as conn:
            conn.execute(update(deliveries).values(state="pending", confirmed=None, due_at=0))
        assert deliver(exporter, "archive") is DeliveryState.DELIVERED
    # Then the archive holds the fallbacks and nothing it refused
    files = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in received.iterdir()}
    assert set(files) == job.sop_uids("sc", "kos", "pdf")
    # And each key image arrived as lossless JPEG 2000 with the pixels unchanged
    for output in (o for o in job.outputs if o.kind == "sc"):
        back = files[output.dataset.SOPInstanceUID]
        assert back.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert np.array_equal(back.pixel_array, output.dataset.pixel_array)
    # And IT is told once per refused output, in words, what goes instead
    refusals = [e for e in logs if e["event"] == "destination_refuses_output"]
    assert sorted(e["output"] for e in refusals) == ["seg", "sr"]
    assert all(e["sent_instead"] == ["sc", "kos", "pdf"] for e in refusals)
    assert "Segmentation Storage is not accepted" in next(
        e["reason"] for e in refusals if e["output"] == "seg"
    )
    # And the delivery records what was refused and transcoded
    [event] = [e for e in store.index.events("delivered")][-1:]
    assert set(event["detail"]["refused"]) == {"seg", "sr"}
    assert event["detail"]["transcoded"] == {"sc": "JPEG 2000 Image Compression (Lossless Only)"}
    store.close()


def test_a_dead_destination_never_blocks_another_and_ends_in_the_failed_list(
    tmp_path: Path, orthanc: Orthanc
) -> None:
    # Given a job for the PACS and for a destination nothing listens on
    dead = {"name": "dead", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()}
    config = config_with(tmp_path, dimse_destination(orthanc), dead, max_age_hours=1)
    store: InstanceStore = make_store(config)
    clock = Clock()
    job = encoded_job(store, tmp_path / "ct", ("dead", "pacs"), now=clock())
    exporter = Exporter(config, store.index, store.root, clock=clock, rng=lambda: 1.0)
    queue = JobQueue(store.index)
    # When both are attempted
    assert deliver(exporter, "dead") is DeliveryState.PENDING
    assert deliver(exporter, "pacs") is DeliveryState.DELIVERED
    # Then the PACS has its results while the dead destination waits for a retry with
    # the reason in words
    assert set(result_instances(orthanc, job)) == job.sop_uids()
    [pending] = [
        d for d in DeliveryQueue(store.index).for_job(job.job.id) if d.destination == dead["name"]
    ]
    assert "connection refused" in str(pending.reason)
    assert pending.due_at == pytest.approx(clock() + 1.0)  # base delay, jitter at its top
    waiting = queue.get(job.job.id)
    assert waiting is not None and waiting.state is JobState.DELIVERING
    # And `radnode jobs` shows the job with what is being retried and why
    assert str(waiting.reason).startswith("retrying delivery to dead: ")
    assert "connection refused" in str(waiting.reason)
    # When it still fails after the maximum age
    clock.now += 3601
    assert deliver(exporter, "dead") is DeliveryState.FAILED
    # Then the job is failed, with the destination and the reason
    failed = queue.get(job.job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert "not delivered to dead" in str(failed.reason) and "gave up after 2 attempts" in str(
        failed.reason
    )
    # When IT fixes it and retries the job
    assert DeliveryQueue(store.index).retry_job(job.job.id, clock()) == 1
    # Then the job is delivering again and the delivery is due now, with fresh attempts
    assert queue.get(job.job.id).state is JobState.DELIVERING  # type: ignore[union-attr]
    [again] = [
        d for d in DeliveryQueue(store.index).for_job(job.job.id) if d.destination == dead["name"]
    ]
    assert again.state is DeliveryState.PENDING and again.attempts == 0
    store.close()


@pytest.fixture
def refuses_seg_at_storage() -> Iterator[tuple[int, list[Any]]]:
    """A pynetdicom SCP that accepts every storage SOP class at negotiation but answers
    "SOP class not supported" (0x0122) to a SEG: a PACS whose archive backend lacks it."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import SegmentationStorage  # type: ignore[attr-defined]

    received: list[Any] = []

    def on_store(event: Any) -> int:
        if event.request.AffectedSOPClassUID == SegmentationStorage:
            return 0x0122
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="PICKY")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    yield port, received
    server.shutdown()


def test_a_seg_refused_at_storage_is_replaced_by_the_fallbacks_in_the_same_association(
    tmp_path: Path, refuses_seg_at_storage: tuple[int, list[Any]]
) -> None:
    port, received = refuses_seg_at_storage
    # Given a destination that wants SEG and SR and answers 0x0122 to the SEG
    picky = {"name": "picky", "ae_title": "PICKY", "host": "127.0.0.1", "port": port,
             "outputs": ["seg", "sr"], "fallback_outputs": ["kos", "pdf"]}  # fmt: skip
    config = config_with(tmp_path, picky)
    store = make_store(config)
    job = encoded_job(store, tmp_path / "ct", ("picky",))
    # When the results are delivered
    exporter = Exporter(config, store.index, store.root)
    assert deliver(exporter, "picky") is DeliveryState.DELIVERED
    # Then the destination has the fallbacks, and neither the SEG nor the SR pointing at it
    assert {str(ds.SOPInstanceUID) for ds in received} == job.sop_uids("kos", "pdf")
    [event] = store.index.events("delivered")
    assert event["detail"]["kinds"] == ["kos", "pdf"]
    assert "0x0122 (SOP class not supported)" in event["detail"]["refused"]["seg"]
    store.close()
