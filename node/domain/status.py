"""DICOM status codes and association rejection reasons, by name (PS3.4 B.2.3, PS3.8 9.3.4)."""

from typing import Final

# C-STORE and C-ECHO response statuses
SUCCESS: Final = 0x0000
OUT_OF_RESOURCES: Final = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC210
PROCESSING_FAILURE: Final = 0x0110
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
# C-FIND: a match follows (the second: some optional keys were not supported)
PENDING: Final = 0xFF00
PENDING_WARNING: Final = 0xFF01

STATUS_NAMES: Final = {
    SUCCESS: "success",
    OUT_OF_RESOURCES: "out of resources",
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "data set does not match SOP class",
    CANNOT_UNDERSTAND: "cannot understand",
    PROCESSING_FAILURE: "processing failure",
    SOP_CLASS_NOT_SUPPORTED: "SOP class not supported",
}

# A-ASSOCIATE-RJ result
REJECTED_PERMANENT: Final = 0x01
REJECTED_TRANSIENT: Final = 0x02

# A-ASSOCIATE-RJ source
SOURCE_SERVICE_USER: Final = 0x01
SOURCE_SERVICE_PROVIDER_ACSE: Final = 0x02
SOURCE_SERVICE_PROVIDER_PRESENTATION: Final = 0x03

# A-ASSOCIATE-RJ reason, when the source is the service user
REASON_NO_REASON_GIVEN: Final = 0x01
REASON_CALLING_AE_NOT_RECOGNIZED: Final = 0x03
REASON_CALLED_AE_NOT_RECOGNIZED: Final = 0x07
# ... and when the source is the service provider (presentation)
REASON_TEMPORARY_CONGESTION: Final = 0x01
REASON_LOCAL_LIMIT_EXCEEDED: Final = 0x02


def describe_status(status: int) -> str:
    """A status code in words, for logs and the CLI."""
    name = STATUS_NAMES.get(status)
    if name is None:
        if status & 0xF000 == 0xB000:
            name = "warning"
        elif status & 0xFF00 == 0xA700:
            name = "out of resources"
        elif status & 0xF000 == 0xC000:
            name = "cannot understand"
        else:
            name = "failure"
    return f"0x{status:04X} ({name})"


def describe_rejection(result: int, source: int, reason: int) -> str:
    """An A-ASSOCIATE-RJ in words an IT engineer can act on."""
    kind = "permanently" if result == REJECTED_PERMANENT else "for now (transient)"
    if source == SOURCE_SERVICE_USER:
        text = {
            REASON_CALLING_AE_NOT_RECOGNIZED: "calling AE title not recognized",
            REASON_CALLED_AE_NOT_RECOGNIZED: "called AE title not recognized",
            0x02: "application context name not supported",
        }.get(reason, "no reason given")
    elif source == SOURCE_SERVICE_PROVIDER_PRESENTATION:
        text = {
            REASON_TEMPORARY_CONGESTION: "temporary congestion",
            REASON_LOCAL_LIMIT_EXCEEDED: "local limit exceeded (too many associations)",
        }.get(reason, "no reason given")
    else:
        text = "protocol version not supported" if reason == 0x02 else "no reason given"
    return f"rejected {kind}: {text}"
