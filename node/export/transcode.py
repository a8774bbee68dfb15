"""Transfer syntaxes on export: what to propose, and how to meet what was accepted.

Results are written in Explicit VR Little Endian. A destination may prefer, or
accept only, a compressed syntax; each object is then sent in one the destination
accepted, re-encoded in memory when needed (lossless only: a result is never
degraded on the way).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Lossless syntaxes Radnode can write, most widely supported first.
LOSSLESS_ENCODABLE = (JPEG2000Lossless, JPEGLSLossless, RLELossless)


class CannotTranscode(Exception):
    """No accepted transfer syntax can carry this object."""


def proposed_syntaxes(stored: str, has_pixels: bool) -> list[str]:
    """The syntaxes to propose for an object: its own, the uncompressed ones and, for
    objects with pixel data, the lossless ones Radnode can write."""
    syntaxes = [stored, *UNCOMPRESSED]
    if has_pixels:
        syntaxes.extend(LOSSLESS_ENCODABLE)
    return list(dict.fromkeys(syntaxes))


def choose_syntax(stored: str, accepted: Collection[str]) -> str | None:
    """The accepted syntax to send in: the stored one when accepted (no work), else an
    uncompressed one, else a lossless compressed one; None when none is accepted."""
    if stored in accepted:
        return stored
    for syntax in (*UNCOMPRESSED, *LOSSLESS_ENCODABLE):
        if syntax in accepted:
            return syntax
    return None


def transcode(ds: Dataset, candidates: Sequence[str]) -> str:
    """Re-encode `ds` in place into the first of `candidates` that works; return it.

    Between the two uncompressed little-endian syntaxes only the meta header changes
    (pynetdicom encodes the data set for the accepted context). Raises CannotTranscode
    with the reasons when none works (a 1-bit SEG cannot be RLE encoded, say).
    """
    problems: list[str] = []
    for candidate in candidates:
        syntax = UID(candidate)
        current = UID(ds.file_meta.TransferSyntaxUID)
        if syntax == current:
            return syntax
        try:
            if current.is_compressed:
                # The same object in another encoding: its SOP Instance UID stays.
                ds.decompress(generate_instance_uid=False)
            if syntax.is_compressed:
                ds.compress(syntax, generate_instance_uid=False)
            else:
                ds.file_meta.TransferSyntaxUID = syntax
            return syntax
        except Exception as exc:  # noqa: BLE001 - each pixel encoder raises its own errors
            problems.append(f"{syntax.name}: {exc}")
    raise CannotTranscode("; ".join(problems) or "no transfer syntax accepted")
