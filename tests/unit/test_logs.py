"""Logging: JSON lines for machines, and never a patient's identity."""

from __future__ import annotations

import io
import json

import structlog

from node.logs import REDACTED, configure_logging


def test_json_lines_when_not_a_terminal_with_phi_keys_redacted() -> None:
    out = io.StringIO()
    configure_logging("info", "auto", stream=out)
    structlog.get_logger("t").info(
        "instance_stored",
        sop_instance_uid="1.2.3",
        patient_name="DOE^JANE",
        PatientID="12345",
        accession_number="A1",
    )
    [line] = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "instance_stored"
    assert event["sop_instance_uid"] == "1.2.3"
    assert event["patient_name"] == REDACTED
    assert event["PatientID"] == REDACTED
    assert event["accession_number"] == REDACTED
    assert "DOE" not in line and "12345" not in line


def test_level_filter_drops_debug_at_info() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    structlog.get_logger("t").debug("noise")
    structlog.get_logger("t").warning("signal")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["signal"]
