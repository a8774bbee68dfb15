"""Sending DICOM to peers: connectivity checks and C-STORE as an SCU."""

from node.export.scu import (
    EchoResult,
    SendReport,
    Target,
    echo,
    parse_target,
    send_files,
)

__all__ = ["EchoResult", "SendReport", "Target", "echo", "parse_target", "send_files"]
