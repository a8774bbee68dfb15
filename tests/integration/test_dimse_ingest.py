"""The node as a subprocess, spoken to by DCMTK's echoscu and storescu over loopback."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLSLossless

from node.store.filemeta import IMPLEMENTATION_CLASS_UID
from node.synthetic import write_ct_series
from tests.helpers import (
    NodeProcess,
    dataset_bytes,
    dcmtk,
    iter_stored_files,
    push_in_parallel,
    run_tool,
    storescu_args,
)

NodeFactory = Callable[..., NodeProcess]


def echoscu(node: NodeProcess, calling: str = "ECHOSCU", called: str | None = None):
    return run_tool(
        [
            dcmtk("echoscu"),
            "-aet",
            calling,
            "-aec",
            called or node.ae_title,
            "127.0.0.1",
            str(node.port),
        ]
    )


def storescu(node: NodeProcess, files: list[Path], *options: str):
    return run_tool(storescu_args(node, files, *options))


def indexed(node: NodeProcess) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (relative path, transfer syntax) from the node's index."""
    with sqlite3.connect(node.index_db()) as db:
        rows = db.execute("SELECT sop_instance_uid, relpath, transfer_syntax_uid FROM instances")
        return {uid: (path, ts) for uid, path, ts in rows}


def rejected_events(node: NodeProcess) -> list[dict[str, object]]:
    return [e for e in node.log_events() if e["event"] == "association_rejected"]


def test_c_echo_from_a_configured_source_succeeds(node_factory: NodeFactory) -> None:
    node = node_factory()
    done = echoscu(node)
    assert done.returncode == 0, done.stderr
    accepted = [e for e in node.log_events() if e["event"] == "association_accepted"]
    assert accepted[0]["calling_ae"] == "ECHOSCU"
    assert accepted[0]["source"] == "dcmtk-echo"
    assert str(accepted[0]["peer"]).startswith("127.0.0.1:")


def test_unknown_calling_ae_is_rejected_as_not_recognized(node_factory: NodeFactory) -> None:
    node = node_factory()
    done = echoscu(node, calling="STRANGER")
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr
    [event] = rejected_events(node)
    assert event["reason"] == "calling AE title not recognized"
    assert event["calling_ae"] == "STRANGER"


def test_known_ae_calling_from_an_unlisted_host_is_rejected(node_factory: NodeFactory) -> None:
    node = node_factory(
        sources=[{"name": "far-pacs", "ae_title": "ECHOSCU", "hosts": ["10.20.30.40"]}]
    )
    done = echoscu(node)
    assert "Calling AE Title Not Recognized" in done.stderr
    [event] = rejected_events(node)
    assert "may not call from 127.0.0.1" in str(event["detail"])


def test_wrong_called_ae_is_rejected_as_not_recognized(node_factory: NodeFactory) -> None:
    node = node_factory()
    done = echoscu(node, called="NOTRADNODE")
    assert "Called AE Title Not Recognized" in done.stderr
    [event] = rejected_events(node)
    assert event["reason"] == "called AE title not recognized"


def test_associations_beyond_the_limit_are_told_to_retry_later(
    node_factory: NodeFactory,
) -> None:
    from pynetdicom import AE

    node = node_factory(node={"max_associations": 1})
    # Given one association held open
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert held.is_established
    try:
        # When a second one is requested
        done = echoscu(node)
        # Then it is rejected as transient, local limit exceeded
        assert done.returncode != 0
        assert "Local Limit Exceeded" in done.stderr
    finally:
        held.release()
    # And once the first is released, a new one is accepted again
    deadline = time.monotonic() + 5
    while echoscu(node).returncode != 0:
        assert time.monotonic() < deadline, "the slot was not given back"
        time.sleep(0.1)


@pytest.mark.parametrize("associations", [1, 4])
def test_storescu_push_is_stored_byte_identical_and_indexed(
    node_factory: NodeFactory, tmp_path: Path, associations: int
) -> None:
    node = node_factory()
    series = write_ct_series(tmp_path / "ct", slices=24, rows=64, cols=64)
    files = list(series.paths)
    push_in_parallel(node, files, associations)
    index = indexed(node)
    assert set(index) == set(series.sop_instance_uids)
    stored_meta = dcmread(node.root / index[series.sop_instance_uids[0]][0]).file_meta
    assert stored_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert stored_meta.MediaStorageSOPInstanceUID == series.sop_instance_uids[0]
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        stored = node.root / index[uid][0]
        assert dataset_bytes(stored) == dataset_bytes(path)
    closed = [e for e in node.log_events() if e["event"] == "association_closed"]
    assert sum(int(e.get("stored", 0)) for e in closed) == len(files)
    assert all(e["studies"] == [series.study_uid] for e in closed)


def test_jpeg_ls_is_stored_as_received_without_decoding(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory()
    series = write_ct_series(tmp_path / "ct", slices=3, rows=64, cols=64)
    compressed = []
    for path in series.paths:
        out = tmp_path / f"jls-{path.name}"
        done = run_tool([dcmtk("dcmcjpls"), str(path), str(out)])
        assert done.returncode == 0, done.stderr
        compressed.append(out)
    done = storescu(node, compressed, "-xt")
    assert done.returncode == 0, done.stderr
    index = indexed(node)
    for path in compressed:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        relpath, syntax = index[uid]
        assert syntax == JPEGLSLossless
        assert dataset_bytes(node.root / relpath) == dataset_bytes(path)


def test_deflated_transfer_syntax_is_accepted(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory()
    series = write_ct_series(tmp_path / "ct", slices=2, rows=32, cols=32)
    done = storescu(node, list(series.paths), "-xd", "-R")
    assert done.returncode == 0, done.stderr
    index = indexed(node)
    assert {ts for _, ts in index.values()} == {DeflatedExplicitVRLittleEndian}
    stored = dcmread(node.root / index[series.sop_instance_uids[0]][0])
    assert stored.SeriesInstanceUID == series.series_uid


def test_real_ct_from_shared_data_is_received_whole(
    node_factory: NodeFactory, shared_data: Path
) -> None:
    node = node_factory()
    files = sorted((shared_data / "data" / "lidc-idri-0001" / "ct").glob("*.dcm"))
    done = storescu(node, files)
    assert done.returncode == 0, done.stderr
    index = indexed(node)
    assert len(index) == len(files) == 133
    stored = {p.name for p in iter_stored_files(node.root)}
    assert len(stored) == 133
    for path in files[:: max(1, len(files) // 10)]:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(node.root / index[uid][0]) == dataset_bytes(path)


def test_several_listener_processes_share_the_port_and_die_with_the_supervisor(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    # Given a node with two listener processes
    node = node_factory(node={"listener_processes": 2})
    series = write_ct_series(tmp_path / "ct", slices=16, rows=32, cols=32)
    files = list(series.paths)
    # When four storescu associations push at once
    push_in_parallel(node, files, 4)
    # Then every instance is indexed once, whichever process received it
    assert set(indexed(node)) == set(series.sop_instance_uids)
    accepted = [e for e in node.log_events() if e["event"] == "association_accepted"]
    assert {e["listener"] for e in accepted} <= {0, 1}
    # And when the supervisor is killed, its listener processes go too: the port is free
    node.kill9()
