"""Sending DICOM to peers: connectivity checks, `radnode send`, and the exporter that
delivers results by C-STORE or STOW-RS with retries."""

from node.export.exporter import Exporter, retry_delay
from node.export.probe import CheckResult, DestinationProbe
from node.export.scu import (
    EchoResult,
    SendReport,
    Target,
    count_series_instances,
    echo,
    parse_target,
    send_files,
    target_of,
)
from node.export.stow import check_stow

__all__ = [
    "CheckResult",
    "DestinationProbe",
    "EchoResult",
    "Exporter",
    "SendReport",
    "Target",
    "check_stow",
    "count_series_instances",
    "echo",
    "parse_target",
    "retry_delay",
    "send_files",
    "target_of",
]
