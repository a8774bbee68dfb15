"""The fast header scan agrees with pydicom on every file it accepts."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from node.errors import InvalidInput
from node.store.header import _KEYWORD_BY_TAG, read_header, read_header_with_pydicom
from node.store.scan import scan_attributes
from node.synthetic import write_ct_series

PYDICOM_FILES = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))


def outcome(reader: object, data: bytes) -> object:
    try:
        return reader(data)  # type: ignore[operator]
    except InvalidInput as exc:
        return ("refused", type(exc).__name__)


def test_scan_and_pydicom_agree_on_pydicoms_own_test_files() -> None:
    # Given the varied files pydicom tests itself with (sequences, private tags,
    # implicit VR, compressed, big endian, deflated, truncated, malformed)
    assert len(PYDICOM_FILES) > 50
    scanned = 0
    for path in PYDICOM_FILES:
        data = path.read_bytes()
        # When the fast scan accepts a file
        if scan_attributes(data, _KEYWORD_BY_TAG) is None:
            continue
        scanned += 1
        # Then the header it gives is the one pydicom gives
        assert outcome(read_header, data) == outcome(read_header_with_pydicom, data), path.name
    assert scanned >= 30, "the scan should handle most ordinary files"


def test_scan_declines_what_it_does_not_handle() -> None:
    by_name = {p.name: p.read_bytes() for p in PYDICOM_FILES}
    assert scan_attributes(by_name["ExplVR_BigEnd.dcm"], _KEYWORD_BY_TAG) is None
    assert scan_attributes(by_name["image_dfl.dcm"], _KEYWORD_BY_TAG) is None
    assert scan_attributes(by_name["no_meta.dcm"], _KEYWORD_BY_TAG) is None
    assert scan_attributes(b"not dicom", _KEYWORD_BY_TAG) is None


def test_scan_reads_undefined_length_sequences_before_the_wanted_tags() -> None:
    data = next(p for p in PYDICOM_FILES if p.name == "nested_priv_SQ.dcm").read_bytes()
    assert outcome(read_header, data) == outcome(read_header_with_pydicom, data)


def test_scan_agrees_on_synthetic_ct(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path, slices=2, rows=8, cols=8)
    data = series.paths[0].read_bytes()
    assert scan_attributes(data, _KEYWORD_BY_TAG) is not None
    assert read_header(data) == read_header_with_pydicom(data)


def test_scan_agrees_on_the_real_ct(shared_data: Path) -> None:
    files = sorted((shared_data / "data" / "lidc-idri-0001" / "ct").glob("*.dcm"))
    for path in files[::10]:
        data = path.read_bytes()
        assert scan_attributes(data, _KEYWORD_BY_TAG) is not None, path.name
        assert read_header(data) == read_header_with_pydicom(data)


@pytest.mark.parametrize("cut", [140, 300, 600])
def test_truncated_files_are_declined_or_agree(tmp_path: Path, cut: int) -> None:
    data = write_ct_series(tmp_path, slices=1, rows=8, cols=8).paths[0].read_bytes()[:cut]
    if scan_attributes(data, _KEYWORD_BY_TAG) is not None:
        assert outcome(read_header, data) == outcome(read_header_with_pydicom, data)
