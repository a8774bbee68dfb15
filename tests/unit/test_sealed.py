"""Encryption at rest: sealed files open with their key only, tampering is caught,
and files written in the clear stay readable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.errors import InvalidInput
from node.store import sealed


@pytest.fixture
def key(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "at-rest.key"
    path.write_bytes(b"k" * 32)
    sealed.configure_sealing(path)
    yield path
    sealed.configure_sealing(None)


def test_sealed_files_open_with_their_key_and_reveal_nothing(key: Path, tmp_path: Path) -> None:
    clear = b"DICM" + b"SYNTHETIC^PATIENT" * 10
    blob = sealed.seal(clear)
    assert blob.startswith(sealed.MAGIC) and b"SYNTHETIC" not in blob and b"DICM" not in blob
    assert sealed.seal(clear) != blob  # a fresh nonce each time
    path = tmp_path / "x.dcm"
    path.write_bytes(blob)
    assert sealed.read_bytes(path) == clear
    assert sealed.dicom_source(path).read() == clear  # type: ignore[union-attr]
    # A changed byte fails the tag
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(InvalidInput, match="does not open with this key"):
        sealed.open_bytes(bytes(tampered))
    # Another key cannot open it, and no key says what is missing
    sealed.configure_sealing(None)
    with pytest.raises(InvalidInput, match=r"no storage\.encryption_key_file"):
        sealed.read_bytes(path)
    other = tmp_path / "other.key"
    other.write_bytes(b"o" * 32)
    sealed.configure_sealing(other)
    with pytest.raises(InvalidInput, match="does not open with this key"):
        sealed.read_bytes(path)


def test_clear_files_stay_readable_and_clear_writing_is_the_default(tmp_path: Path) -> None:
    path = tmp_path / "old.dcm"
    path.write_bytes(b"written before encryption was on")
    assert not sealed.sealing() and sealed.seal(b"x") == b"x"
    assert sealed.read_bytes(path) == b"written before encryption was on"
    assert sealed.dicom_source(path) == path
