"""The HTTP API's pure parts: tokens by their hash with scopes, and the multipart
reader of STOW-RS, with the status each malformed request gets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from node import audit
from node.api.auth import identify, token_digest
from node.config import ApiToken, NodeConfig
from node.ingest.stow import StowRequestError, split_multipart

TOKEN = "correct horse battery staple"  # noqa: S105 - a test token


def tokens() -> list[ApiToken]:
    return [
        ApiToken(name="ops", sha256=token_digest(TOKEN), scopes=["admin"]),
        ApiToken(name="pacs", sha256=token_digest("pacs-token"), scopes=["store"]),
    ]


def test_a_token_is_known_by_its_hash_and_carries_its_scopes() -> None:
    ops = identify(f"Bearer {TOKEN}", tokens())
    assert ops is not None and ops.name == "ops"
    assert ops.may("admin") and ops.may("read") and not ops.may("store")
    pacs = identify("bearer pacs-token", tokens())
    assert pacs is not None and pacs.may("store") and not pacs.may("read")
    for header in (None, "", "Bearer", "Basic b3BzOnB3", f"Bearer {TOKEN}x"):
        assert identify(header, tokens()) is None


def test_the_configuration_takes_hashes_never_tokens() -> None:
    with pytest.raises(ValidationError, match="never the token itself"):
        NodeConfig.model_validate(
            {"api": {"tokens": [{"name": "ops", "sha256": TOKEN, "scopes": ["read"]}]}}
        )
    with pytest.raises(ValidationError, match=r"api\.tokens\[1\]\.sha256 .* is used twice"):
        NodeConfig.model_validate(
            {"api": {"tokens": [
                {"name": "a", "sha256": token_digest("x"), "scopes": ["read"]},
                {"name": "b", "sha256": token_digest("x"), "scopes": ["admin"]},
            ]}}
        )  # fmt: skip


def body(*parts: bytes, boundary: str = "b0und") -> bytes:
    chunks = [f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


MULTI = 'multipart/related; type="application/dicom"; boundary=b0und'


def test_parts_are_split_with_their_headers_and_exact_bytes() -> None:
    payload = b"\r\n--not-the-boundary\r\n\x00\x01"
    parts = split_multipart(
        MULTI,
        body(b"Content-Type: application/dicom\r\n\r\n" + payload, b"\r\nno headers"),
    )
    assert [p.data for p in parts] == [payload, b"no headers"]
    assert parts[0].headers == {"content-type": "application/dicom"}
    assert parts[1].headers == {}


@pytest.mark.parametrize(
    ("content_type", "data", "status", "words"),
    [
        ("application/dicom", b"", 415, "takes multipart/related"),
        ('multipart/related; type="application/dicom+json"; boundary=x', b"", 415,
         "application/dicom parts only"),
        ('multipart/related; type="application/dicom"', b"", 400, "no boundary"),
        (MULTI, b"--b0und\r\nContent-Type: application/dicom\r\n\r\nDICM", 400, "not a complete"),
        (MULTI, b"--b0und--\r\n", 400, "not a complete"),
    ],
)  # fmt: skip
def test_malformed_requests_get_their_status_and_reason(
    content_type: str, data: bytes, status: int, words: str
) -> None:
    with pytest.raises(StowRequestError) as caught:
        split_multipart(content_type, data)
    assert caught.value.http_status == status and words in caught.value.reason


def test_an_audit_trail_that_cannot_be_written_changes_nothing_else(tmp_path: Path) -> None:
    # Given a trail whose file can no longer be written (a full disk, say)
    audit.configure_audit(tmp_path / "audit.jsonl")
    assert audit._fd is not None
    os.close(audit._fd)  # every write now fails with EBADF
    try:
        # When an event is audited
        with capture_logs() as logs:
            audit.audit("association_rejected", calling_ae="STRANGER")
        # Then nothing raises (an association is still rejected), and the log says why
        assert [e["event"] for e in logs] == ["audit_write_failed"]
    finally:
        audit._fd = None
        audit.configure_audit(None)
