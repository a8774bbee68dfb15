"""What the exporter decides without a peer: destination settings, what stands in for
a refused SEG or SR, lossless transcoding, and completion by the sender's count."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from node.assembly import CountedCompletion
from node.cli.main import summarise_config
from node.cli.serve import open_store
from node.config import Destination, NodeConfig
from node.domain import SeriesState
from node.export.outbound import kinds_to_send
from node.export.stow import make_session
from node.export.transcode import CannotTranscode, choose_syntax, proposed_syntaxes, transcode
from node.store import read_header
from node.synthetic import write_ct_series

DIMSE = {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}


def destination(**values: Any) -> Destination:
    return Destination.model_validate({**DIMSE, **values})


# -- destinations ----------------------------------------------------------------------


def test_a_stow_rs_destination_needs_a_url_and_no_dimse_address() -> None:
    web = Destination.model_validate(
        {
            "name": "web",
            "url": "https://pacs.example.org/dicom-web",
            "auth": {"type": "bearer", "token": "t0ken"},
        }
    )
    assert web.protocol == "stow-rs" and destination().protocol == "dimse"
    with pytest.raises(ValidationError, match="not both; remove ae_title, host, port or url"):
        destination(url="http://x/dicom-web")
    with pytest.raises(ValidationError, match="missing port: a C-STORE destination needs"):
        Destination.model_validate({"name": "p", "ae_title": "P", "host": "h"})
    with pytest.raises(ValidationError, match="auth applies to STOW-RS destinations only"):
        destination(auth={"type": "bearer", "token": "x"})
    with pytest.raises(ValidationError, match="basic authentication needs both"):
        Destination.model_validate(
            {"name": "w", "url": "http://x/dicom-web", "auth": {"type": "basic", "username": "u"}}
        )


def test_secrets_never_show_in_the_summary_or_a_repr() -> None:
    config = NodeConfig.model_validate(
        {"destinations": [{"name": "web", "url": "http://pacs:8042/dicom-web",
                           "auth": {"type": "basic", "username": "u", "password": "hunter2"}}]}
    )  # fmt: skip
    summary = summarise_config(config)
    assert "STOW-RS http://pacs:8042/dicom-web (basic auth)" in summary
    assert "hunter2" not in summary and "hunter2" not in repr(config)


def test_fallbacks_cannot_be_seg_or_sr() -> None:
    with pytest.raises(ValidationError, match="cannot stand in for a refused SEG or SR"):
        destination(fallback_outputs=["sr"])


def test_retry_max_must_not_be_shorter_than_the_base() -> None:
    with pytest.raises(ValidationError, match=r"retry_max_seconds \(5\) is shorter than"):
        NodeConfig.model_validate({"delivery": {"retry_base_seconds": 60, "retry_max_seconds": 5}})


# -- what is sent ----------------------------------------------------------------------


def test_fallbacks_replace_a_refused_seg_and_the_sr_that_needs_it() -> None:
    dest = destination(outputs=["seg", "sr", "pdf"], fallback_outputs=["sc", "kos"])
    assert kinds_to_send(dest) == ["seg", "sr", "pdf"]
    # A refused SEG takes the SR with it (its references would dangle)
    assert kinds_to_send(dest, {"seg"}) == ["pdf", "sc", "kos"]
    # A refused SR alone keeps the SEG
    assert kinds_to_send(dest, {"sr"}) == ["seg", "pdf", "sc", "kos"]
    # A refused fallback is not sent either; a refused PDF brings no fallback
    assert kinds_to_send(dest, {"seg", "kos"}) == ["pdf", "sc"]
    assert kinds_to_send(dest, {"pdf"}) == ["seg", "sr"]


# -- transfer syntaxes -----------------------------------------------------------------


def test_the_stored_syntax_is_preferred_then_uncompressed_then_lossless() -> None:
    stored = str(ExplicitVRLittleEndian)
    assert choose_syntax(stored, {JPEG2000Lossless, stored}) == stored
    assert choose_syntax(stored, {JPEG2000Lossless, ImplicitVRLittleEndian}) == (
        ImplicitVRLittleEndian
    )
    assert choose_syntax(stored, {RLELossless, JPEG2000Lossless}) == JPEG2000Lossless
    assert choose_syntax(stored, {"1.2.840.10008.1.2.4.50"}) is None  # lossy JPEG: never
    assert proposed_syntaxes(stored, has_pixels=False) == [stored, ImplicitVRLittleEndian]
    assert JPEGLSLossless in proposed_syntaxes(stored, has_pixels=True)


@pytest.fixture
def ct_slice(tmp_path: Path) -> pydicom.Dataset:
    [path] = write_ct_series(tmp_path, slices=1).paths
    return pydicom.dcmread(path)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_transcoding_is_lossless_and_keeps_the_instance_uid(
    ct_slice: pydicom.Dataset, syntax: str
) -> None:
    pixels = ct_slice.pixel_array.copy()
    uid = ct_slice.SOPInstanceUID
    assert transcode(ct_slice, [syntax]) == syntax
    buffer = io.BytesIO()
    ct_slice.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert back.file_meta.TransferSyntaxUID == syntax and back.SOPInstanceUID == uid
    assert np.array_equal(back.pixel_array, pixels)


def test_an_object_no_accepted_syntax_can_carry_is_refused_with_the_reasons(
    ct_slice: pydicom.Dataset,
) -> None:
    ct_slice.BitsAllocated = 1  # a BINARY SEG's pixels: RLE cannot carry them
    ct_slice.BitsStored = 1
    ct_slice.HighBit = 0
    ct_slice.PixelData = np.packbits(np.zeros(ct_slice.Rows * ct_slice.Columns, bool)).tobytes()
    with pytest.raises(CannotTranscode, match="RLE Lossless"):
        transcode(ct_slice, [RLELossless])


# -- completion by count ---------------------------------------------------------------


def test_a_series_completes_when_the_senders_count_is_reached(tmp_path: Path) -> None:
    config = NodeConfig.model_validate({"storage": {"root": str(tmp_path), "min_free_mb": 0}})
    store = open_store(config)
    series = write_ct_series(tmp_path / "ct", slices=4)
    now = [1000.0]
    asked: list[str] = []
    answer: list[int | None] = [None]

    def counter(source: str, study_uid: str, series_uid: str) -> int | None:
        asked.append(series_uid)
        return answer[0]

    completion = CountedCompletion(store.index, counter, {"pacs": 5.0}, clock=lambda: now[0])

    def receive(count: int) -> None:
        for path in series.paths[:count]:
            data = path.read_bytes()
            store.store_instance(read_header(data), data, source="pacs")

    def state() -> str:
        [study] = store.index.list_studies()
        return study.series[0].state

    # Given two of four slices here and a PACS that cannot say how many there are
    receive(2)
    assert completion.check() == [] and asked == [series.series_uid]
    # Then it is asked again only after its interval
    completion.check()
    assert len(asked) == 1
    now[0] += 5
    answer[0] = 4
    assert completion.check() == [] and len(asked) == 2
    assert state() == SeriesState.RECEIVING
    # When the other two arrive, the series is complete at once, with no new question
    receive(4)
    [done] = completion.check()
    assert done.instance_count == 4 and len(asked) == 2
    assert state() == SeriesState.COMPLETE
    [event] = store.index.events("series_complete")
    assert event["detail"]["by"] == "count from the sender (C-FIND)"
    store.close()


def test_stow_rs_sessions_carry_the_configured_credentials() -> None:
    bearer = Destination.model_validate(
        {"name": "web", "url": "https://x/dicom-web", "auth": {"type": "bearer", "token": "t0k"}}
    )
    basic = Destination.model_validate(
        {
            "name": "web",
            "url": "https://x/dicom-web",
            "auth": {"type": "basic", "username": "radnode", "password": "pw"},
        }
    )
    assert make_session(bearer).headers["Authorization"] == "Bearer t0k"
    assert make_session(basic).auth == ("radnode", "pw")
    assert "Authorization" not in make_session(destination(url=None)).headers
