"""Model results on disk: written durably, read back exactly, never taken for instances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.store import InstanceIndex, InstanceStore, read_header
from node.store.files import RESULTS_DIR, TEMP_MARK, iter_instance_files, remove_partial_files
from node.store.results import load_result, save_result
from node.synthetic import write_ct_series

JOB_ID = "148708b4-ab23-562b-954a-b65188614f1f"


def sample() -> dict[str, Any]:
    """What a worker saves for one job: findings, masks, labels and metadata."""
    rng = np.random.default_rng(7)
    lungs = rng.random((3, 5, 7)) > 0.5  # 105 voxels: not a multiple of 8
    single = np.zeros((1, 1, 1), dtype=bool)
    single[0, 0, 0] = True
    labels = rng.integers(0, 65535, size=(3, 5, 7), dtype=np.uint16)
    labels[0, 0, 0] = 65535
    return {
        "findings": [
            {
                "label": "Nodule",
                "tracking_id": "nodule-1",
                "centroid_mm": [-12.25, 40.5, -301.75],
                "volume_mm3": 523.6,
                "key_slice": 1,
                "attributes": {"elongation": 1.0625},
            }
        ],
        "masks": {"Lung": lungs, "Speck": single},
        "labels": {"findings": labels},
        "meta": {
            "model": "lung-nodules",
            "model_version": "1.0.0",
            "timings": {"model": 0.1 + 0.2},  # a float that shows rounding at once
            "sop_instance_uids": ["1.2.3.1", "1.2.3.2", "1.2.3.3"],
            "spacing": [2.5, 0.7, 0.7],
            "shape": [3, 5, 7],
            "notes": {"candidates": 0, "empty": None, "flag": True},
        },
    }


def test_a_saved_result_reads_back_exactly(tmp_path: Path) -> None:
    data = sample()
    relpath = save_result(tmp_path, JOB_ID, **data)
    assert relpath == f"{RESULTS_DIR}/{JOB_ID}"
    result = load_result(tmp_path, relpath)
    assert result.folder == tmp_path / relpath
    assert result.findings == data["findings"]
    assert result.meta == data["meta"]
    assert set(result.arrays) == {"Lung", "Speck", "findings"}
    for name, mask in data["masks"].items():
        back = result.arrays[name]
        assert back.dtype == np.bool_ and back.shape == mask.shape
        assert np.array_equal(back, mask), name
    labels = result.arrays["findings"]
    assert labels.dtype == np.uint16
    assert np.array_equal(labels, data["labels"]["findings"])


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1, 9), (2, 3, 1), (8, 8, 8)])
def test_bool_masks_of_any_shape_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    mask = np.zeros(shape, dtype=bool)
    mask.flat[::3] = True
    mask.flat[-1] = True  # the last voxel sits in the padding bits of the packed byte
    relpath = save_result(tmp_path, JOB_ID, findings=[], masks={"m": mask}, labels={}, meta={})
    back = load_result(tmp_path, relpath).arrays["m"]
    assert back.shape == shape and np.array_equal(back, mask)


def test_saving_leaves_no_temporary_files_and_can_be_repeated(tmp_path: Path) -> None:
    data = sample()
    save_result(tmp_path, JOB_ID, **data)
    # A job that runs again after a crash writes the same folder again
    data["meta"]["model_version"] = "1.0.1"
    relpath = save_result(tmp_path, JOB_ID, **data)
    folder = tmp_path / relpath
    assert sorted(p.name for p in folder.iterdir()) == [
        "arrays.npz",
        "findings.json",
        "result.json",
    ]
    assert not [p for p in tmp_path.rglob(f"{TEMP_MARK}*")]
    assert load_result(tmp_path, relpath).meta["model_version"] == "1.0.1"


def test_results_are_not_listed_as_instances(tmp_path: Path) -> None:
    # Given a storage root holding one received instance
    root = tmp_path / "root"
    store = InstanceStore(root, InstanceIndex(f"sqlite:///{tmp_path / 'index.sqlite3'}"), 0)
    [path] = write_ct_series(tmp_path / "ct", slices=1, rows=8, cols=8).paths
    data = path.read_bytes()
    stored = store.store_instance(read_header(data), data)
    # And a result beside it, including a DICOM file as the encoders will write one
    relpath = save_result(root, JOB_ID, **sample())
    (root / relpath / "seg.dcm").write_bytes(b"DICM")
    # When the files on disk are listed (as the start-up scan does)
    listed = list(iter_instance_files(root))
    # Then only the instance is there
    assert listed == [stored.relpath]


def test_a_temporary_result_file_left_by_a_crash_is_removed_at_start(tmp_path: Path) -> None:
    # Given a result folder where a crash interrupted a write
    relpath = save_result(tmp_path, JOB_ID, **sample())
    leftover = tmp_path / relpath / f"{TEMP_MARK}abc123"
    leftover.write_bytes(b"half a result")
    # When the node starts and cleans up partial writes
    removed = remove_partial_files(tmp_path)
    # Then the leftover is gone and the result itself is intact
    assert removed == 1 and not leftover.exists()
    assert load_result(tmp_path, relpath).meta == sample()["meta"]


def test_temporary_files_deep_in_a_result_are_removed_at_start(tmp_path: Path) -> None:
    # Given a crash while a job's DICOM outputs were being written
    dicom = tmp_path / "results" / "job1" / "dicom"
    dicom.mkdir(parents=True)
    (dicom / ".partial-abc").write_bytes(b"half")
    (dicom / "sr.dcm").write_bytes(b"whole")
    # When the node starts, then the partial file is gone and the whole one stays
    assert remove_partial_files(tmp_path) == 1
    assert sorted(p.name for p in dicom.iterdir()) == ["sr.dcm"]


def test_writing_outputs_again_leaves_only_this_runs_objects(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from node.results.encode import Output, write_outputs

    def obj() -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = generate_uid()
        return ds

    # Given a first run that wrote an SR and a KOS
    folder = tmp_path / "dicom"
    write_outputs(folder, [Output("sr", obj(), "sr.dcm"), Output("kos", obj(), "kos.dcm")])
    # When the job runs again and writes only the SR (the profile changed)
    write_outputs(folder, [Output("sr", obj(), "sr.dcm")])
    # Then only the SR is there: the folder holds exactly what result.json will list
    assert sorted(p.name for p in folder.iterdir()) == ["sr.dcm"]
