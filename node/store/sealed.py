"""Encryption at rest: instance files and results sealed with AES-256-GCM.

With `storage.encryption_key_file` set, every file the node keeps under its storage
root (received instances, result objects and metadata) is written sealed: a marker,
a random 96-bit nonce, the ciphertext and its tag. Files are opened in memory only,
never written back in the clear; a file that was tampered with fails its tag and
is refused. Files written before encryption was turned on stay readable (they have
no marker), so switching it on needs no migration.

The key is derived from the key file (SHA-256 of a label and the file's bytes), so
any file of 32 random bytes or more works. Lose the file and the data is lost.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.errors import InvalidInput

MAGIC = b"RADNODE-AESGCM1\n"
_NONCE = 12


class Sealer:
    """Seals and opens byte strings with one key."""

    def __init__(self, key_material: bytes) -> None:
        key = hashlib.sha256(b"radnode-at-rest-v1\0" + key_material).digest()
        self._aead = AESGCM(key)

    def seal(self, data: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, MAGIC)

    def open(self, blob: bytes) -> bytes:
        nonce = blob[len(MAGIC) : len(MAGIC) + _NONCE]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + _NONCE :], MAGIC)
        except InvalidTag as exc:
            raise InvalidInput(
                "a sealed file does not open with this key: it was changed, or "
                "storage.encryption_key_file is not the key it was written with"
            ) from exc


_sealer: Sealer | None = None


def configure_sealing(key_file: Path | None) -> None:
    """Seal what this process writes from now on (None: write in the clear)."""
    global _sealer
    _sealer = Sealer(key_file.read_bytes()) if key_file is not None else None


def sealing() -> bool:
    """Whether this process seals what it writes."""
    return _sealer is not None


def seal(data: bytes) -> bytes:
    """`data` as this process stores it: sealed when encryption is on."""
    return _sealer.seal(data) if _sealer is not None else data


def open_bytes(blob: bytes) -> bytes:
    """The clear bytes of a stored file's content, sealed or not."""
    if not blob.startswith(MAGIC):
        return blob
    if _sealer is None:
        raise InvalidInput(
            "the file is sealed (encrypted at rest) and no storage.encryption_key_file "
            "is configured"
        )
    return _sealer.open(blob)


def read_bytes(path: Path) -> bytes:
    """A stored file's clear content."""
    return open_bytes(path.read_bytes())


def read_text(path: Path) -> str:
    """A stored text file's clear content."""
    return read_bytes(path).decode("utf-8")


def dicom_source(path: Path) -> Path | io.BytesIO:
    """What to give pydicom for a stored file: the path, or its clear bytes in memory
    when it is sealed (so nothing clear is ever written back)."""
    with path.open("rb") as handle:
        head = handle.read(len(MAGIC))
    return io.BytesIO(read_bytes(path)) if head == MAGIC else path
