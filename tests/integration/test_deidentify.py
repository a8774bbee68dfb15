"""De-identified delivery for a research archive: the Basic Application Level
Confidentiality Profile with pseudonymous UIDs from the node's key, checked with
dciodvfy, and delivered into Orthanc with no identity left and no summary PDF."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import update

from node.config import NodeConfig
from node.domain import DeliveryState
from node.export import Exporter
from node.export.deidentify import Deidentifier
from node.store.schema import deliveries
from tests.delivery_helpers import EncodedJob, encoded_job, make_store
from tests.helpers import dicom3tools
from tests.orthanc import Orthanc
from tests.results_helpers import to_bytes, validator_messages, write

PHI = ("SYNTHETIC^PATIENT", "SYN-0001", "SYNACC1", "19500101")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(bytes(range(48)))
    return path


@pytest.fixture
def job(tmp_path: Path, key: Path) -> EncodedJob:
    config = NodeConfig.model_validate({"storage": {"root": str(tmp_path / "s"), "min_free_mb": 0}})
    store = make_store(config)
    made = encoded_job(store, tmp_path / "ct", ())
    store.close()
    return made


def identity_in(ds: pydicom.Dataset) -> list[str]:
    text = str(ds)
    return [value for value in PHI if value in text]


def test_the_profile_removes_identity_with_stable_keyed_pseudonyms(
    job: EncodedJob, key: Path, tmp_path: Path
) -> None:
    deid = Deidentifier.from_file(key)
    other = Deidentifier(b"another key of thirty-two bytes or more!")
    outputs = {o.kind: o.dataset for o in job.outputs if o.kind != "pdf"}
    assert all(identity_in(ds) for ds in outputs.values())  # the originals carry it
    done, again, elsewhere = {}, {}, {}
    for kind, original in outputs.items():
        done[kind] = pydicom.dcmread(io.BytesIO(to_bytes(original)))
        deid.apply(done[kind])
        again[kind] = pydicom.dcmread(io.BytesIO(to_bytes(original)))
        deid.apply(again[kind])
        elsewhere[kind] = pydicom.dcmread(io.BytesIO(to_bytes(original)))
        other.apply(elsewhere[kind])
    for kind, ds in done.items():
        # Then no identity is left, and the object says it was de-identified
        assert identity_in(ds) == [], kind
        assert ds.PatientIdentityRemoved == "YES" and "StudyDescription" not in ds
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        # And its UIDs are pseudonyms: new, the same with the same key, others with another
        assert ds.StudyInstanceUID != job.study_uid
        assert ds.SOPInstanceUID == again[kind].SOPInstanceUID
        assert ds.SOPInstanceUID != elsewhere[kind].SOPInstanceUID
        assert ds.SOPClassUID == outputs[kind].SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # And the results of one study still belong together: one study, and the SEG and
    # the KOS point at the same (pseudonymous) source series
    assert len({ds.StudyInstanceUID for ds in done.values()}) == 1
    seg_source = done["seg"].ReferencedSeriesSequence[0].SeriesInstanceUID
    kos_series = {
        item.SeriesInstanceUID
        for item in done["kos"]
        .CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence
    }
    assert seg_source in kos_series and seg_source != job.source_series_uid
    # And the de-identified SEG and SR are still valid objects for dciodvfy
    for kind in ("seg", "sr"):
        path = write(done[kind], tmp_path / f"{kind}.dcm")
        errors, _ = validator_messages([dicom3tools("dciodvfy"), str(path)])
        assert errors == set(), (kind, errors)


def test_a_research_archive_receives_de_identified_results_without_the_pdf(
    tmp_path: Path, key: Path
) -> None:
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        # Given a destination marked deidentify, and the node's pseudonym key
        config = NodeConfig.model_validate({
            "storage": {"root": str(tmp_path / "store"), "min_free_mb": 0},
            "deidentification": {"key_file": str(key)},
            "destinations": [{"name": "research", "ae_title": pacs.aet, "host": "127.0.0.1",
                              "port": pacs.dicom_port, "deidentify": True}],
        })  # fmt: skip
        store = make_store(config)
        job = encoded_job(store, tmp_path / "ct", ("research",))
        exporter = Exporter(config, store.index, store.root)
        # When the results are delivered, twice (a crash after the first, say)
        for _ in range(2):
            exporter.open_deliveries()
            delivery = exporter.queue.claim("research", exporter.owner, 300, 0 + 1e12)
            if delivery is None:  # the second time: put it back as a crash would
                with store.index.write_transaction() as conn:
                    conn.execute(update(deliveries).values(state="pending", confirmed=None))
                delivery = exporter.queue.claim("research", exporter.owner, 300, 1e12)
            assert delivery is not None
            assert exporter.deliver(config.destinations[0], delivery) is DeliveryState.DELIVERED
        # Then the archive holds every result but the PDF, once, under a pseudonymous
        # study, with no identity in any of its tags
        studies = pacs.get("/studies?expand")
        assert len(studies) == 1
        assert studies[0]["MainDicomTags"]["StudyInstanceUID"] != job.study_uid
        instances = pacs.get(f"/studies/{studies[0]['ID']}/instances")
        assert len(instances) == len([o for o in job.outputs if o.kind != "pdf"])
        for item in instances:
            tags = pacs.get(f"/instances/{item['ID']}/simplified-tags")
            assert tags["PatientIdentityRemoved"] == "YES"
            assert tags["SOPClassUID"] != "1.2.840.10008.5.1.4.1.1.104.1"  # no PDF
            assert not [v for v in PHI if v in str(tags)]
        store.close()
    finally:
        pacs.stop()
