"""The store: files written atomically and durably, indexed, deduplicated, versioned."""

from __future__ import annotations

import io
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import validate_file_meta

from node.domain import InstanceHeader, StoreOutcome
from node.errors import InvalidInput, StorageFull
from node.store import InstanceIndex, InstanceStore, read_header
from node.store.filemeta import IMPLEMENTATION_CLASS_UID, encode_file_meta
from node.synthetic import write_ct_series
from tests.helpers import iter_stored_files


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    index = InstanceIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    return InstanceStore(tmp_path / "root", index, reserve_bytes=0, clock=lambda: 1000.0)


@pytest.fixture
def series(tmp_path: Path) -> list[bytes]:
    written = write_ct_series(tmp_path / "ct", slices=3, rows=16, cols=16)
    return [p.read_bytes() for p in written.paths]


def test_a_new_instance_is_written_byte_identical_and_indexed(
    store: InstanceStore, series: list[bytes]
) -> None:
    header = read_header(series[0])
    result = store.store_instance(header, series[0], source="pacs", calling_ae="PACS1")
    assert result.outcome is StoreOutcome.STORED
    assert result.relpath == f"{header.study_uid}/{header.series_uid}/{header.sop_instance_uid}.dcm"
    assert store.path_of(result.relpath).read_bytes() == series[0]
    indexed = store.index.find_instance(header.sop_instance_uid)
    assert indexed is not None and indexed.version == 1


def test_the_same_bytes_again_are_a_duplicate_not_a_second_row(
    store: InstanceStore, series: list[bytes]
) -> None:
    header = read_header(series[0])
    store.store_instance(header, series[0])
    again = store.store_instance(header, series[0])
    assert again.outcome is StoreOutcome.DUPLICATE
    assert store.index.count_instances() == 1
    [study] = store.index.list_studies()
    assert study.instance_count == 1 and study.series[0].instance_count == 1


def test_different_bytes_for_a_known_instance_become_its_new_version(
    store: InstanceStore, series: list[bytes]
) -> None:
    header = read_header(series[0])
    store.store_instance(header, series[0])
    changed = series[0][:-2] + b"\x01\x02"
    result = store.store_instance(header, changed)
    assert result.outcome is StoreOutcome.NEW_VERSION
    assert result.version == 2
    assert store.path_of(result.relpath).read_bytes() == changed
    assert store.index.count_instances() == 1
    [event] = store.index.events("instance_replaced")
    assert event["sop_instance_uid"] == header.sop_instance_uid
    assert event["detail"]["version"] == 2
    assert event["detail"]["previous_sha256"] != event["detail"]["sha256"]


def test_below_the_disk_reserve_nothing_is_written(tmp_path: Path, series: list[bytes]) -> None:
    index = InstanceIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "root", index, reserve_bytes=2**62)
    with pytest.raises(StorageFull, match="below the reserve"):
        store.store_instance(read_header(series[0]), series[0])
    assert not any(p.is_file() for p in (tmp_path / "root").rglob("*"))
    assert index.count_instances() == 0


def test_an_instance_cannot_move_to_another_series(
    store: InstanceStore, tmp_path: Path, series: list[bytes]
) -> None:
    header = read_header(series[0])
    store.store_instance(header, series[0])
    other = write_ct_series(tmp_path / "other", slices=1, rows=16, cols=16)
    moved_bytes = other.paths[0].read_bytes()
    moved = replace(read_header(moved_bytes), sop_instance_uid=header.sop_instance_uid)
    with pytest.raises(InvalidInput, match="cannot move to another series"):
        store.store_instance(moved, moved_bytes)
    assert [p.name for p in iter_stored_files(store.root)] == [f"{header.sop_instance_uid}.dcm"]


def test_reindex_finds_files_the_index_lacks_and_removes_partial_writes(
    tmp_path: Path, series: list[bytes]
) -> None:
    # Given files on disk from a node that crashed before indexing them
    root = tmp_path / "root"
    first = InstanceStore(root, InstanceIndex(f"sqlite:///{tmp_path / 'a.sqlite3'}"), 0)
    for data in series:
        first.store_instance(read_header(data), data)
    partial = next(iter_stored_files(root)).with_name(".partial-123-abcd-x.dcm")
    partial.write_bytes(b"half")
    # When a node with an empty index starts on the same root
    second = InstanceStore(root, InstanceIndex(f"sqlite:///{tmp_path / 'b.sqlite3'}"), 0)
    report = second.reindex()
    # Then every file is indexed and the partial write is gone
    assert report.indexed == 3 and report.partial_removed == 1 and report.unreadable == 0
    assert second.index.count_instances() == 3
    assert not partial.exists()
    assert second.reindex().indexed == 0, "a second scan finds nothing new"


def test_read_header_refuses_what_is_not_dicom() -> None:
    with pytest.raises(InvalidInput, match=r"not a DICOM data set|cannot be decoded"):
        read_header(b"this is not DICOM at all" * 10)


def test_read_header_names_the_missing_uid(series: list[bytes]) -> None:
    ds = dcmread(io.BytesIO(series[0]))
    del ds.SeriesInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(InvalidInput, match="SeriesInstanceUID is missing"):
        read_header(buffer.getvalue())


def test_read_header_refuses_a_uid_that_would_escape_the_storage_root(
    series: list[bytes],
) -> None:
    ds = dcmread(io.BytesIO(series[0]))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID we mean
        ds.StudyInstanceUID = "../../etc"
        ds.save_as(buffer)
    with pytest.raises(InvalidInput, match=r"StudyInstanceUID '\.\./\.\./etc' is not a valid"):
        read_header(buffer.getvalue())


def test_read_header_keeps_patient_data_out_of_repr(series: list[bytes]) -> None:
    header = read_header(series[0])
    assert header.patient_name == "SYNTHETIC^PATIENT"
    assert "SYNTHETIC^PATIENT" not in repr(header)
    assert "SYN-0001" not in repr(header)


def test_a_received_file_is_placed_and_indexed_or_removed_when_refused(
    store: InstanceStore, series: list[bytes]
) -> None:
    # Given two files received into the staging folder
    store.staging_dir.mkdir(parents=True)
    kept, refused = store.staging_dir / ".partial-rx-a.dcm", store.staging_dir / ".partial-rx-b.dcm"
    kept.write_bytes(series[0])
    refused.write_bytes(series[1])

    # When one passes the check and the other does not
    def refuse(_header: InstanceHeader) -> None:
        raise InvalidInput("not this one")

    header, result = store.receive_file(kept, check=lambda h: None, source="pacs")
    with pytest.raises(InvalidInput, match="not this one"):
        store.receive_file(refused, check=refuse)
    # Then the first is in place and indexed, and nothing of the second remains
    assert store.path_of(result.relpath).read_bytes() == series[0]
    assert store.index.find_instance(header.sop_instance_uid) is not None
    assert list(store.staging_dir.iterdir()) == []
    assert store.index.count_instances() == 1


def test_a_received_file_below_the_reserve_is_removed(tmp_path: Path, series: list[bytes]) -> None:
    index = InstanceIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    store = InstanceStore(tmp_path / "root", index, reserve_bytes=2**62)
    store.staging_dir.mkdir(parents=True)
    staged = store.staging_dir / ".partial-rx-a.dcm"
    staged.write_bytes(series[0])
    with pytest.raises(StorageFull):
        store.receive_file(staged)
    assert not staged.exists()
    assert index.count_instances() == 0


def test_file_meta_written_by_the_node_is_valid_part_10(series: list[bytes]) -> None:
    ds = dcmread(io.BytesIO(series[0]))
    meta = encode_file_meta(
        ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, "PACS1"
    )
    original_meta_end = 144 + int.from_bytes(series[0][140:144], "little")
    rebuilt = dcmread(io.BytesIO(meta + series[0][original_meta_end:]))
    validate_file_meta(rebuilt.file_meta, enforce_standard=True)
    assert rebuilt.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert rebuilt.file_meta.SourceApplicationEntityTitle == "PACS1"
    assert rebuilt.SOPInstanceUID == ds.SOPInstanceUID
    assert rebuilt.PixelData == ds.PixelData
