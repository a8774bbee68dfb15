"""Structured logging: JSON lines for collectors, readable lines on a terminal.

A last processor removes patient attributes from every event, whatever a caller
passed by mistake: logs carry UIDs, counts and reasons, never identities.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

# Keys that would carry patient data. An event that names one keeps the key (so the
# mistake is visible) but never its value.
PHI_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_id",
        "patientid",
        "patient_birth_date",
        "patientbirthdate",
        "birth_date",
        "accession_number",
        "accessionnumber",
        "other_patient_ids",
        "patient_address",
    }
)
REDACTED = "[redacted]"


def redact_phi(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of any patient-identifying key with a marker."""
    for key in list(event_dict):
        if key.lower() in PHI_KEYS:
            event_dict[key] = REDACTED
    return event_dict


class _ForwardToStructlog(logging.Handler):
    """Send warnings from libraries (pynetdicom) through structlog, so one format rules."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger(record.name)
        level = record.levelname.lower()
        getattr(log, level if level in {"warning", "error", "critical"} else "info")(
            "library_message", message=record.getMessage()
        )


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Set up structlog for the whole process."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_phi,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs every PDU at INFO/DEBUG; only its warnings and errors matter here,
    # and those carry no dataset contents.
    lib = logging.getLogger("pynetdicom")
    lib.handlers = [_ForwardToStructlog()]
    lib.setLevel(logging.WARNING)
    lib.propagate = False
