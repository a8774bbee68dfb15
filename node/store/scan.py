"""A fast scan of the few top-level attributes the node reads from a received file.

pydicom builds a data element object for every attribute it walks past; for a CT
slice that was the largest share of the node's own time per image. This scan walks
the element headers of an explicit or implicit VR little endian file, skips values
and sequences without decoding them, keeps the raw bytes of the wanted attributes
and stops after the last of them. Whatever it does not handle (deflated or big
endian data sets, character sets other than ASCII, Latin-1 and UTF-8, multi-valued
text, anything malformed) it declines by returning None, and the caller reads the
file with pydicom instead.
"""

from __future__ import annotations

import struct
from typing import Final

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

UNDEFINED: Final = 0xFFFFFFFF
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQUENCE_END: Final = 0xFFFEE0DD
_META_TRANSFER_SYNTAX: Final = 0x00020010
_META_SOP_CLASS: Final = 0x00020002
_NOT_EXPLICIT_LE: Final = frozenset({DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian})
_CHARSETS: Final = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1",
                    "ISO_IR 192": "utf-8"}  # fmt: skip
SPECIFIC_CHARACTER_SET: Final = 0x00080005

Element = tuple[bytes, int, int]  # VR (b"" when implicit), value length, header size


def _header(data: bytes, pos: int, explicit: bool) -> Element | None:
    if not explicit:
        if pos + 8 > len(data):
            return None
        return b"", struct.unpack_from("<I", data, pos + 4)[0], 8
    vr = data[pos + 4 : pos + 6]
    if len(vr) != 2 or not vr.isalpha() or not vr.isupper():
        return None
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            return None
        return vr, struct.unpack_from("<I", data, pos + 8)[0], 12
    return vr, struct.unpack_from("<H", data, pos + 6)[0], 8


def _skip_sequence(data: bytes, pos: int, explicit: bool) -> int | None:
    """Skip undefined-length content (items) up to its sequence delimiter."""
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            return None
        if length != UNDEFINED:
            pos += length
            continue
        end = _skip_elements(data, pos, explicit, until=_ITEM_END)
        if end is None:
            return None
        pos = end
    return None


def _skip_elements(data: bytes, pos: int, explicit: bool, until: int) -> int | None:
    """Skip elements of an undefined-length item up to and including its delimiter."""
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group << 16 | element == until:
            return pos + 8
        found = _header(data, pos, explicit)
        if found is None:
            return None
        vr, length, size = found
        pos += size
        if length == UNDEFINED:
            # UN of undefined length holds implicit VR little endian (PS3.5 6.2.2)
            end = _skip_sequence(data, pos, explicit and vr != b"UN")
            if end is None:
                return None
            pos = end
        else:
            pos += length
    return None


def _walk(
    data: bytes, pos: int, explicit: bool, wanted: frozenset[int], last: int
) -> tuple[dict[int, bytes], int] | None:
    """Collect raw values of `wanted` top-level tags up to `last`; None if unsure."""
    found: dict[int, bytes] = {}
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | element
        if tag > last:
            break
        element_header = _header(data, pos, explicit)
        if element_header is None or group == 0xFFFE:
            return None
        vr, length, size = element_header
        pos += size
        if length == UNDEFINED:
            end = _skip_sequence(data, pos, explicit and vr != b"UN")
            if end is None:
                return None
            pos = end
            continue
        if pos + length > len(data):
            return None
        if tag in wanted:
            found[tag] = data[pos : pos + length]
        pos += length
    return found, pos


def scan_attributes(data: bytes, wanted: dict[int, str]) -> tuple[str, dict[str, str]] | None:
    """The transfer syntax and the wanted attributes (keyword -> text) of a Part 10 file.

    `wanted` maps tags to keywords; absent attributes are absent from the result, and
    (0002,0002) is given as the SOP class when the data set has no SOP Class UID.
    Returns None when the file is outside what this scan handles.
    """
    if data[128:132] != b"DICM":
        return None
    meta = _walk(data, 132, True, frozenset({_META_TRANSFER_SYNTAX, _META_SOP_CLASS}), 0x0002FFFF)
    if meta is None or _META_TRANSFER_SYNTAX not in meta[0]:
        return None
    meta_values, pos = meta
    syntax = meta_values[_META_TRANSFER_SYNTAX].decode("ascii", "replace").strip("\0 ")
    if syntax in _NOT_EXPLICIT_LE:
        return None
    explicit = syntax != ImplicitVRLittleEndian
    tags = frozenset(wanted) | {SPECIFIC_CHARACTER_SET}
    walked = _walk(data, pos, explicit, tags, max(tags))
    if walked is None:
        return None
    raw = walked[0]
    charset = raw.pop(SPECIFIC_CHARACTER_SET, b"").decode("ascii", "replace").strip("\0 ")
    encoding = _CHARSETS.get(charset)
    if encoding is None:
        return None
    values: dict[str, str] = {}
    for tag, value in raw.items():
        text = value.decode(encoding, "replace").strip("\0 ")
        if "\\" in text:
            return None  # multi-valued: leave the conventions to pydicom
        values[wanted[tag]] = text
    if _META_SOP_CLASS in meta_values:
        values.setdefault(
            "MediaStorageSOPClassUID",
            meta_values[_META_SOP_CLASS].decode("ascii", "replace").strip("\0 "),
        )
    return syntax, values
