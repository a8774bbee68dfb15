"""Receiving studies: the DIMSE SCP (C-ECHO, C-STORE) for configured sources."""

from node.ingest.limiter import AssociationLimiter
from node.ingest.scp import DicomListener
from node.ingest.syntaxes import ACCEPTED_TRANSFER_SYNTAXES

__all__ = ["ACCEPTED_TRANSFER_SYNTAXES", "AssociationLimiter", "DicomListener"]
