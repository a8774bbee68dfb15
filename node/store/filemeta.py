"""Encode the DICOM File Meta Information (PS3.10 7.1) for a received data set.

A C-STORE data set arrives without file meta; the node stores it as a Part 10 file
whose meta names Radnode as the implementation that wrote it. Encoding the few
meta elements here is far cheaper than building a pydicom Dataset per instance.
"""

from __future__ import annotations

import struct
from typing import Final

from node import __version__

# Radnode's Implementation Class UID: a UUID-derived UID (PS3.5 B.2), fixed forever.
IMPLEMENTATION_CLASS_UID: Final = "2.25.170667229062823560198768577253035380364"
IMPLEMENTATION_VERSION_NAME: Final = f"RADNODE_{__version__}"[:16]
PREAMBLE: Final = b"\x00" * 128 + b"DICM"
_GROUP_LENGTH_TAG: Final = (0x0002, 0x0000)


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _short(element: int, vr: bytes, value: bytes) -> bytes:
    """An explicit VR little endian element of group 0002 with a 2-byte length."""
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str | None = None,
) -> bytes:
    """Preamble, 'DICM' and the file meta group, ready to prepend to a data set."""
    return PREAMBLE + encode_meta_group(
        sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae_title
    )


def encode_meta_group(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str | None = None,
) -> bytes:
    """The file meta group (0002,xxxx) alone, explicit VR little endian."""
    body = b"".join(
        (
            # (0002,0001) File Meta Information Version, OB with a 4-byte length
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _short(0x0002, b"UI", _pad(sop_class_uid.encode("ascii"), b"\x00")),
            _short(0x0003, b"UI", _pad(sop_instance_uid.encode("ascii"), b"\x00")),
            _short(0x0010, b"UI", _pad(transfer_syntax_uid.encode("ascii"), b"\x00")),
            _short(0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00")),
            _short(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" ")),
            _short(0x0016, b"AE", _pad(source_ae_title.strip().encode("ascii"), b" "))
            if source_ae_title
            else b"",
        )
    )
    group_length = struct.pack("<HH2sHI", *_GROUP_LENGTH_TAG, b"UL", 4, len(body))
    return group_length + body
