"""Bad input, full disks, re-sends, aborts and crashes: the node answers clearly and
keeps everything it acknowledged."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association

from node.domain.status import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from node.synthetic import write_ct_series
from tests.helpers import NodeProcess, dataset_bytes, dcmtk_env, iter_stored_files, storescu_args

NodeFactory = Callable[..., NodeProcess]


@contextmanager
def association(node: NodeProcess) -> Iterator[Association]:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def count_rows(node: NodeProcess, table: str = "instances") -> int:
    with sqlite3.connect(node.index_db()) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608


def events(node: NodeProcess, name: str) -> list[dict[str, object]]:
    return [e for e in node.log_events() if e["event"] == name]


def raw_file(tmp_path: Path, sop_uid: str, dataset: bytes) -> Path:
    """A Part 10 file whose data set bytes are exactly `dataset`."""
    path = tmp_path / f"raw-{sop_uid}.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(buffer.getvalue() + dataset)
    return path


def test_undecodable_data_set_gets_cannot_understand_and_the_association_goes_on(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    good = write_ct_series(tmp_path / "ct", slices=1, rows=16, cols=16).paths[0]
    # A data set that claims a 4 GB element: not decodable
    garbage = raw_file(tmp_path, "1.2.3.4.5", b"\x08\x00\x18\x00UI\xff\xff" + os.urandom(64))
    with association(node) as assoc:
        status = assoc.send_c_store(garbage)
        assert status.Status == CANNOT_UNDERSTAND
        # the same association still stores a good instance
        assert assoc.send_c_store(good).Status == SUCCESS
    [event] = events(node, "instance_rejected")
    assert event["sop_instance_uid"] == "1.2.3.4.5"
    assert event["status"] == "0xC210 (cannot understand)"
    assert event["reason"]
    assert count_rows(node) == 1


def test_a_missing_study_uid_is_refused_with_the_attribute_named(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    path = write_ct_series(tmp_path / "ct", slices=1, rows=16, cols=16).paths[0]
    ds = dcmread(path)
    del ds.StudyInstanceUID
    with association(node) as assoc:
        assert assoc.send_c_store(ds).Status == CANNOT_UNDERSTAND
    [event] = events(node, "instance_rejected")
    assert event["reason"] == "StudyInstanceUID is missing or empty"
    assert count_rows(node) == 0
    assert list(iter_stored_files(node.root)) == []


def test_a_data_set_whose_uid_differs_from_the_request_is_refused(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    path = write_ct_series(tmp_path / "ct", slices=1, rows=16, cols=16).paths[0]
    body = dataset_bytes(path)
    lying = raw_file(tmp_path, "1.2.3.999", body)  # the request names another instance
    with association(node) as assoc:
        assert assoc.send_c_store(lying).Status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert count_rows(node) == 0


def test_below_the_disk_reserve_the_answer_is_out_of_resources_and_nothing_is_written(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory(storage={"min_free_mb": 1_000_000_000})
    path = write_ct_series(tmp_path / "ct", slices=1, rows=16, cols=16).paths[0]
    with association(node) as assoc:
        assert assoc.send_c_store(path).Status == OUT_OF_RESOURCES
    assert count_rows(node) == 0
    assert not any(p.is_file() for p in node.root.rglob("*") if p.suffix == ".dcm")
    assert not any(p.name.startswith(".partial-") for p in node.root.rglob("*"))
    [event] = events(node, "instance_not_stored")
    assert "below the reserve" in str(event["reason"])


def test_resent_identical_bytes_are_one_instance_and_changed_bytes_a_new_version(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    path = write_ct_series(tmp_path / "ct", slices=1, rows=16, cols=16).paths[0]
    changed = dcmread(path)
    changed.SeriesDescription = "CORRECTED"
    with association(node) as assoc:
        assert assoc.send_c_store(path).Status == SUCCESS
        assert assoc.send_c_store(path).Status == SUCCESS
        assert count_rows(node) == 1
        assert assoc.send_c_store(changed).Status == SUCCESS
    assert count_rows(node) == 1
    assert len(events(node, "instance_duplicate_ignored")) == 1
    [new_version] = events(node, "instance_new_version")
    assert new_version["version"] == 2
    [stored] = list(iter_stored_files(node.root))
    assert dcmread(stored).SeriesDescription == "CORRECTED"


def test_an_aborted_association_keeps_every_acknowledged_instance(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    series = write_ct_series(tmp_path / "ct", slices=8, rows=16, cols=16)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    for path in series.paths[:5]:
        assert assoc.send_c_store(path).Status == SUCCESS
    assoc.abort()
    deadline = time.monotonic() + 5
    while not events(node, "association_closed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert count_rows(node) == 5
    assert events(node, "association_closed")[0]["how"] == "aborted"
    with association(node) as again:  # and the node keeps serving
        assert again.send_c_store(series.paths[5]).Status == SUCCESS


def test_kill_9_during_a_300_instance_push_loses_nothing_acknowledged(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    # Given a node receiving a 300-instance push from storescu
    node = node_factory()
    series = write_ct_series(tmp_path / "ct", slices=300, rows=128, cols=128)
    push = subprocess.Popen(
        storescu_args(node, list(series.paths), "-v"),
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while sum(1 for _ in iter_stored_files(node.root)) < 100:
        assert time.monotonic() < deadline, "the push did not get going"
        time.sleep(0.01)
    # When the node is killed with SIGKILL mid-push
    node.kill9()
    output, _ = push.communicate(timeout=60)
    acknowledged = acknowledged_files(output)
    # storescu may not have read the last response before the kill: >= 90, not 100
    assert 90 <= len(acknowledged) < 300, "the kill must land mid-push"
    # Then after a restart every acknowledged instance is on disk, indexed, identical
    node.start()
    with sqlite3.connect(node.index_db()) as db:
        index = dict(db.execute("SELECT sop_instance_uid, relpath FROM instances"))
    for path in acknowledged:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert uid in index, f"{path.name} was acknowledged but is not indexed"
        assert dataset_bytes(node.root / index[uid]) == dataset_bytes(path)
    assert not any(p.name.startswith(".partial-") for p in node.root.rglob("*"))
    # And the sender can finish the study on the restarted node
    rest = subprocess.run(
        storescu_args(node, list(series.paths)),
        env=dcmtk_env(),
        capture_output=True,
        check=False,
    )
    assert rest.returncode == 0
    assert count_rows(node) == 300


def acknowledged_files(storescu_verbose: str) -> list[Path]:
    """Files storescu -v reported as sent and answered with Success."""
    acked: list[Path] = []
    current: Path | None = None
    for line in storescu_verbose.splitlines():
        sending = re.match(r"I: Sending file: (.+)$", line)
        if sending:
            current = Path(sending.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def test_missing_pixel_module_is_still_stored(node_factory: NodeFactory) -> None:
    """The node stores what it receives; judging images is for the models, later."""
    node = node_factory()
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.3"
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with association(node) as assoc:
        assert assoc.send_c_store(ds).Status == SUCCESS
    assert count_rows(node) == 1


@pytest.fixture(autouse=True)
def _send_files_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let pynetdicom send a file's bytes unchanged, so tests can send broken ones."""
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
